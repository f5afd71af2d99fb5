"""The ViSpec draft: loaders for the released checkpoint layout, an independent NumPy reference
of the draft forward, adaptor placement, initialisation, Medusa heads, errors.

The NumPy model below is written from vispec-reference.md (sections 2.1-2.5), against the
official PyTorch tensor names and layouts, and deliberately plain: it builds the compressed
sequence segment by segment like the reference's worked example and runs causal attention over
it. It calls no library code.
"""

import dataclasses
import json
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vispec_jax as vj
from vispec_jax import checkpoints, draft, layers
from vispec_jax.draft.checkpoints import official_name_map
from vispec_jax.draft.vispec import ViSpecDrafter

H, NH, FF, V = 32, 4, 48, 40
HD = H // NH


def official_config(num_q=None, qkv_bias=True, bias=None, rope_theta=1e6, **extra):
  """A config.json like vispec/train/qwen2.5_vl_*_config.json, shrunk."""
  raw = {"architectures": ["LlamaForCausalLM"], "hidden_size": H, "num_attention_heads": NH,
         "num_key_value_heads": NH, "intermediate_size": FF, "vocab_size": V,
         "num_hidden_layers": 1, "rms_norm_eps": 1e-6, "hidden_act": "silu",
         "max_position_embeddings": 64, "pretraining_tp": 1, "rope_scaling": None,
         "torch_dtype": "float32", "pad_token_id": 0, **extra}
  if rope_theta is not None:
    raw["rope_theta"] = rope_theta
  if qkv_bias is not None:
    raw["qkv_bias"] = qkv_bias
  if bias is not None:
    raw["bias"] = bias
  if num_q is not None:
    raw["num_q"] = num_q
  return raw


def official_state_dict(seed=0, num_q=2, qkv_bias=True, fc_bias=True, vispec=True, h=H, v=V):
  """Random tensors with exactly the official names and torch layouts ([out, in])."""
  rng = np.random.default_rng(seed)
  r = lambda *s: (0.12 * rng.standard_normal(s)).astype(np.float32)
  sd = {"embed_tokens.weight": r(v, h), "fc.weight": r(h, 2 * h),
        "layers.0.self_attn.q_proj.weight": r(h, h), "layers.0.self_attn.k_proj.weight": r(h, h),
        "layers.0.self_attn.v_proj.weight": r(h, h), "layers.0.self_attn.o_proj.weight": r(h, h),
        "layers.0.mlp.gate_proj.weight": r(FF, h), "layers.0.mlp.up_proj.weight": r(FF, h),
        "layers.0.mlp.down_proj.weight": r(h, FF),
        "layers.0.post_attention_layernorm.weight": 1 + r(h)}
  if fc_bias:
    sd["fc.bias"] = r(h)
  if qkv_bias:
    for p in "qkv":
      sd[f"layers.0.self_attn.{p}_proj.bias"] = r(h)
  if vispec:
    sd["imadpt.q"] = (rng.standard_normal((num_q, NH, h // NH)) * (h // NH) ** -0.5).astype(np.float32)
    for p in "kvo":
      sd[f"imadpt.{p}_proj.weight"] = r(h, h)
    if qkv_bias:
      sd["imadpt.k_proj.bias"], sd["imadpt.v_proj.bias"] = r(h), r(h)
    sd["img_fc.weight"] = r(h, 2 * h)
    if fc_bias:
      sd["img_fc.bias"] = r(h)
  return sd


def write_official(folder, sd, raw):
  os.makedirs(folder, exist_ok=True)
  checkpoints.write_safetensors(sd, os.path.join(folder, "model.safetensors"), {"format": "pt"})
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(raw, f)
  return str(folder)


# --------------------------------------------------------------- NumPy reference model


def np_linear(sd, name, x):
  y = x @ sd[name + ".weight"].astype(np.float64).T
  return y + sd[name + ".bias"] if name + ".bias" in sd else y


def np_adaptor(sd, img):
  """ImgAdaptor: learned queries attend over one image run's embeddings -> [num_q, H]."""
  q = sd["imadpt.q"].astype(np.float64)
  nq = q.shape[0]
  k = np_linear(sd, "imadpt.k_proj", img).reshape(-1, NH, HD)
  v = np_linear(sd, "imadpt.v_proj", img).reshape(-1, NH, HD)
  out = np.zeros((nq, NH, HD))
  for h in range(NH):
    s = q[:, h] @ k[:, h].T / np.sqrt(HD)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out[:, h] = p @ v[:, h]
  return np_linear(sd, "imadpt.o_proj", out.reshape(nq, H))


def np_rope(x, pos, base):
  inv = 1.0 / base ** (np.arange(0, HD, 2) / HD)
  ang = np.asarray(pos, np.float64)[:, None] * inv[None]
  cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
  rot = np.concatenate([-x[..., HD // 2:], x[..., :HD // 2]], -1)
  return x * cos[:, None] + rot * sin[:, None]


def np_layer(sd, x, pos, base, eps=1e-6):
  """The draft decoder layer (no input norm) with a plain causal mask over x's rows."""
  n = len(x)
  q = np_rope(np_linear(sd, "layers.0.self_attn.q_proj", x).reshape(n, NH, HD), pos, base)
  k = np_rope(np_linear(sd, "layers.0.self_attn.k_proj", x).reshape(n, NH, HD), pos, base)
  v = np_linear(sd, "layers.0.self_attn.v_proj", x).reshape(n, NH, HD)
  att = np.zeros((n, NH, HD))
  for h in range(NH):
    s = q[:, h] @ k[:, h].T / np.sqrt(HD)
    s = np.where(np.tril(np.ones((n, n), bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    att[:, h] = p @ v[:, h]
  x = x + np_linear(sd, "layers.0.self_attn.o_proj", att.reshape(n, H))
  y = x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * sd["layers.0.post_attention_layernorm.weight"]
  g = np_linear(sd, "layers.0.mlp.gate_proj", y)
  m = np_linear(sd, "layers.0.mlp.down_proj", g / (1 + np.exp(-g)) * np_linear(sd, "layers.0.mlp.up_proj", y))
  return x + m


def np_vispec_prefill(sd, feats, embeds, is_image, root_embed, base):
  """One row, unpadded. Returns (hidden [n, H] of the compressed sequence, the original slot of
  each compressed-sequence entry, position ids, g of the last image)."""
  num_q = sd["imadpt.q"].shape[0]
  length = len(feats)
  nxt = np.concatenate([embeds[1:], root_embed[None]], 0)   # e_{i+1}
  img = list(is_image[1:]) + [False]                         # slot i is an image position
  seq, slots, g = [], [], np.zeros(H)
  i = 0
  while i < length:
    if not img[i]:   # text: fc([e_{i+1}; img_fc([f_i; g])])
      hid = np_linear(sd, "img_fc", np.concatenate([feats[i], g]))
      seq.append(np_linear(sd, "fc", np.concatenate([nxt[i], hid])))
      slots.append(i)
      i += 1
      continue
    j = i
    while j < length and img[j]:
      j += 1
    a = np_adaptor(sd, nxt[i:j])       # this run's image embeddings
    for t in range(num_q - 1):          # compressed tokens at the last num_q-1 run positions
      seq.append(a[t])
      slots.append(j - (num_q - 1) + t)
    g = a[-1]
    i = j
  pos = slots  # position id = original (shifted) index
  hidden = np_layer(sd, np.stack(seq), pos, base)
  return hidden, slots, g


def np_logp(lm_head, h):
  z = h @ lm_head
  z = z - z.max()
  return z - np.log(np.exp(z).sum())


# ----------------------------------------------------------------------- fixtures

# Per row: unpadded length and image-token ranges [start, end).
ROWS = {
    "one_image": (10, [(3, 7)]),                   # the reference's worked example
    "two_images": (16, [(2, 6), (9, 13)]),
    "no_image": (12, []),
    "image_then_tail": (14, [(1, 4), (5, 10)]),   # image right after token 0; 1-token gap
}
P = 16


def make_batch(rows, seed=1):
  rng = np.random.default_rng(seed)
  b = len(rows)
  feats = rng.standard_normal((b, P, H)).astype(np.float32)
  embeds = rng.standard_normal((b, P, H)).astype(np.float32)
  mask = np.zeros((b, P), bool)
  vision = np.zeros((b, P), bool)
  for r, name in enumerate(rows):
    n, runs = ROWS[name]
    mask[r, P - n:] = True
    for s, e in runs:
      vision[r, P - n + s:P - n + e] = True
  feats[~mask] = 0
  embeds[~mask] = 0
  root = rng.integers(0, V, b).astype(np.int32)
  return feats, embeds, mask, vision, root


@pytest.fixture(scope="module")
def official(tmp_path_factory):
  sd = official_state_dict()
  folder = write_official(tmp_path_factory.mktemp("vispec_official"), sd, official_config())
  return sd, folder


@pytest.fixture(scope="module")
def head():
  rng = np.random.default_rng(7)
  return {"embed": (0.5 * rng.standard_normal((V, H))).astype(np.float32),
          "lm_head": {"kernel": (0.5 * rng.standard_normal((H, V))).astype(np.float32)}}


# ------------------------------------------------------------------------ loaders


def test_official_checkpoint_lands_in_place(official):
  sd, folder = official
  d = vj.load_draft(folder)
  cfg = d.config
  assert (cfg.kind, cfg.num_q, cfg.qkv_bias, cfg.fc_bias, cfg.rope_theta) == ("vispec", 2, True, True, 1e6)
  p = jax.tree.map(np.asarray, d.params)
  # Transposes checked by values: our kernel [in, out] applied as x @ K equals torch's x @ W^T.
  for name, path in [("fc", ("fc",)), ("layers.0.self_attn.q_proj", ("layer", "attn", "q")),
                     ("layers.0.self_attn.k_proj", ("layer", "attn", "k")),
                     ("layers.0.self_attn.v_proj", ("layer", "attn", "v")),
                     ("layers.0.self_attn.o_proj", ("layer", "attn", "o")),
                     ("layers.0.mlp.gate_proj", ("layer", "mlp", "gate")),
                     ("layers.0.mlp.up_proj", ("layer", "mlp", "up")),
                     ("layers.0.mlp.down_proj", ("layer", "mlp", "down")),
                     ("imadpt.k_proj", ("adaptor", "k")), ("imadpt.v_proj", ("adaptor", "v")),
                     ("imadpt.o_proj", ("adaptor", "o")), ("img_fc", ("img_fc",))]:
    node = p
    for k in path:
      node = node[k]
    w = sd[name + ".weight"]
    xin = np.random.default_rng(4).standard_normal((5, w.shape[1])).astype(np.float32)
    np.testing.assert_array_equal(node["kernel"], w.T)
    np.testing.assert_allclose(np.asarray(layers.linear(jnp.asarray(xin), node)),
                               xin @ w.T + sd.get(name + ".bias", 0), rtol=1e-5, atol=1e-5)
    if name + ".bias" in sd:
      np.testing.assert_array_equal(node["bias"], sd[name + ".bias"])
    else:
      assert "bias" not in node
  np.testing.assert_array_equal(p["layer"]["post_norm"]["scale"],
                                sd["layers.0.post_attention_layernorm.weight"])
  np.testing.assert_array_equal(p["adaptor"]["q"], sd["imadpt.q"])
  # Every official tensor is used (the embedding copy is checked, not kept).
  used = set(official_name_map(cfg).entries) | {"embed_tokens.weight"}
  assert used == set(sd)
  assert "embed" not in p


def test_official_defaults_when_fields_missing(tmp_path):
  """LLaVA-style config: no rope_theta, no qkv_bias, no bias -> 10000, False, True; num_q from
  the imadpt.q tensor."""
  sd = official_state_dict(num_q=3, qkv_bias=False)
  folder = write_official(tmp_path, sd, official_config(qkv_bias=None, rope_theta=None))
  cfg = vj.load_draft(folder).config
  assert (cfg.rope_theta, cfg.qkv_bias, cfg.fc_bias, cfg.num_q) == (10000.0, False, True, 3)


def test_stage1_eagle_checkpoint_loads(tmp_path):
  sd = official_state_dict(vispec=False)
  d = vj.load_draft(write_official(tmp_path, sd, official_config()))
  assert d.config.kind == "eagle" and isinstance(d.drafter, vj.EagleDrafter)
  assert not isinstance(d.drafter, ViSpecDrafter)


@pytest.mark.parametrize("kind", ["vispec", "eagle", "medusa"])
def test_save_load_round_trip_exact(tmp_path, kind):
  cfg = draft.DraftConfig(kind=kind, hidden_size=H, intermediate_size=FF, num_heads=NH,
                          num_kv_heads=NH, head_dim=HD, vocab_size=V, qkv_bias=True, num_q=3)
  params = layers.init_params(draft.param_shapes(cfg), jax.random.PRNGKey(0), std=0.5)
  folder = vj.save_draft(str(tmp_path / "d"), cfg, params)
  assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]  # no temp files left
  d = vj.load_draft(folder)
  assert d.config == cfg
  assert jax.tree.structure(d.params) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(d.params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert type(vj.make_drafter(cfg)) is type(d.drafter)


def test_wrapped_state_dict_names(tmp_path):
  """A state dict saved through DDP ("module.") loads the same."""
  sd = official_state_dict()
  d = vj.load_draft(write_official(tmp_path, {"module." + k: v for k, v in sd.items()},
                                   official_config()))
  np.testing.assert_array_equal(np.asarray(d.params["img_fc"]["kernel"]), sd["img_fc.weight"].T)


def test_missing_tensor_is_named(tmp_path):
  sd = official_state_dict()
  del sd["imadpt.v_proj.weight"]
  folder = write_official(tmp_path, sd, official_config())
  with pytest.raises(vj.CheckpointError, match="imadpt.v_proj.weight"):
    vj.load_draft(folder)


def test_bias_flag_disagreeing_with_tensors(tmp_path):
  sd = official_state_dict(qkv_bias=True)
  folder = write_official(tmp_path, sd, official_config(qkv_bias=False))
  with pytest.raises(vj.CheckpointError, match="unexpected tensors.*q_proj.bias"):
    vj.load_draft(folder)


def test_bad_configs(tmp_path):
  sd = official_state_dict()
  raw = official_config()
  del raw["hidden_size"]
  with pytest.raises(vj.CheckpointError, match="hidden_size"):
    vj.load_draft(write_official(tmp_path / "a", sd, raw))
  with pytest.raises(vj.CheckpointError, match="num_q 4 but imadpt.q holds 2"):
    vj.load_draft(write_official(tmp_path / "b", sd, official_config(num_q=4)))
  with pytest.raises(vj.CheckpointError, match="num_hidden_layers is 2"):
    vj.load_draft(write_official(tmp_path / "c", sd, official_config(num_hidden_layers=2)))
  with pytest.raises(vj.CheckpointError, match="no config.json"):
    os.makedirs(tmp_path / "d")
    vj.load_draft(str(tmp_path / "d"))
  with pytest.raises(vj.CheckpointError, match="model_type 'qwen2_5_vl' is not a draft"):
    vj.load_draft(write_official(tmp_path / "e", sd, official_config(model_type="qwen2_5_vl")))


def test_official_config_extra_keys_are_ignored(tmp_path):
  """Reference configs carry keys a draft does not use (forks add their own): ignored."""
  sd = official_state_dict()
  plain = vj.load_draft(write_official(tmp_path / "a", sd, official_config(model_type="llama")))
  extra = official_config(model_type="llama", num_hidden_levels=3, vis_select_tokens=64,
                          use_cache=True, transformers_version="4.49.0")
  assert vj.load_draft(write_official(tmp_path / "b", sd, extra)).config == plain.config


# ----------------------------------------------------------- forward vs NumPy reference


@pytest.fixture(scope="module")
def loaded(official):
  sd, folder = official
  d = vj.load_draft(folder)
  return sd, d


@pytest.mark.parametrize("rows", [("one_image", "two_images", "no_image", "image_then_tail"),
                                  ("no_image",)])
def test_prefill_matches_numpy_reference(loaded, head, rows):
  sd, d = loaded
  feats, embeds, mask, vision, root = make_batch(rows)
  drafter = d.drafter
  ctx = draft.PrefillContext(jnp.asarray(feats), jnp.asarray(embeds), jnp.asarray(mask),
                             jnp.asarray(vision), jnp.asarray(root), cache_len=P + 8)
  state, root_logp = jax.jit(drafter.start)(d.params, head, ctx)
  image_slots = np.pad(vision[:, 1:], ((0, 0), (0, 1)))
  next_embeds = np.concatenate([embeds[:, 1:], head["embed"][root][:, None]], 1)
  h, keys, positions, g_last, _ = jax.jit(drafter.prompt_forward)(
      d.params, feats, next_embeds, mask, image_slots)
  h, keys, positions = np.asarray(h), np.asarray(keys), np.asarray(positions)
  worst = 0.0
  for r, name in enumerate(rows):
    n, runs = ROWS[name]
    pad = P - n
    ref_h, slots, g = np_vispec_prefill(sd, feats[r, pad:].astype(np.float64),
                                        embeds[r, pad:].astype(np.float64),
                                        vision[r, pad:], head["embed"][root[r]].astype(np.float64),
                                        d.config.rope_theta)
    # Exactly the compressed sequence's slots are keys, at their reference positions.
    assert sorted(np.nonzero(keys[r])[0] - pad) == slots
    np.testing.assert_array_equal(positions[r, pad:], np.arange(n))
    worst = max(worst, np.abs(h[r, pad + np.asarray(slots)] - ref_h).max())
    np.testing.assert_allclose(h[r, pad + np.asarray(slots)], ref_h, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(root_logp[r]), np_logp(head["lm_head"]["kernel"], ref_h[-1]),
                               atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(state.extra[r]), g, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(g_last[r]), g, atol=1e-5, rtol=1e-5)
    assert int(state.position[r]) == n and int(state.cache.length[r]) == P
    np.testing.assert_array_equal(np.asarray(state.cache.prompt_valid[r]), keys[r])
  print(f"max |flax - numpy| over prompt hidden states: {worst:.2e}")


def test_adaptor_placement_and_global_features(tmp_path, head):
  """num_q = 3: two compressed tokens at the last two positions of each run, one g per image."""
  sd = official_state_dict(num_q=3, seed=5)
  d = vj.load_draft(write_official(tmp_path, sd, official_config()))
  rows = ("two_images",)
  feats, embeds, mask, vision, root = make_batch(rows)
  image_slots = np.pad(vision[:, 1:], ((0, 0), (0, 1)))
  next_embeds = np.concatenate([embeds[:, 1:], head["embed"][root][:, None]], 1)
  x, keys, g_last = d.drafter.prompt_inputs(d.params, jnp.asarray(feats), jnp.asarray(next_embeds),
                                           jnp.asarray(mask), jnp.asarray(image_slots))
  x, keys = np.asarray(x[0]), np.asarray(keys[0])
  # Tokens 2..5 and 9..12 are images -> shifted image slots 1..4 and 8..11.
  runs = [(1, 5), (8, 12)]
  expect = np.ones(P, bool)
  for s, e in runs:
    expect[s:e - 2] = False
  np.testing.assert_array_equal(keys, expect)
  gs = []
  for s, e in runs:
    a = np_adaptor(sd, next_embeds[0, s:e].astype(np.float64))
    np.testing.assert_allclose(x[e - 2:e], a[:2], atol=1e-5)
    gs.append(a[2])
  def text_x(i, g):
    hid = np_linear(sd, "img_fc", np.concatenate([feats[0, i], g]))
    return np_linear(sd, "fc", np.concatenate([next_embeds[0, i], hid]))
  np.testing.assert_allclose(x[0], text_x(0, np.zeros(H)), atol=1e-5)   # before any image
  np.testing.assert_allclose(x[5], text_x(5, gs[0]), atol=1e-5)          # after image 1
  np.testing.assert_allclose(x[7], text_x(7, gs[0]), atol=1e-5)
  np.testing.assert_allclose(x[12], text_x(12, gs[1]), atol=1e-5)        # after image 2
  np.testing.assert_allclose(x[15], text_x(15, gs[1]), atol=1e-5)
  np.testing.assert_allclose(np.asarray(g_last[0]), gs[1], atol=1e-5)

  # The no-global-feature ablation: the same compressed tokens, g = 0 at every text slot.
  ablated = dataclasses.replace(d.drafter, cfg=dataclasses.replace(d.config, global_feature=False))
  x0, keys0, g0 = ablated.prompt_inputs(d.params, jnp.asarray(feats), jnp.asarray(next_embeds),
                                        jnp.asarray(mask), jnp.asarray(image_slots))
  x0 = np.asarray(x0[0])
  np.testing.assert_array_equal(np.asarray(keys0[0]), keys)
  for s, e in runs:
    np.testing.assert_allclose(x0[e - 2:e], x[e - 2:e], atol=1e-6)
  for i in (0, 5, 7, 12, 15):
    np.testing.assert_allclose(x0[i], text_x(i, np.zeros(H)), atol=1e-5)
  assert not np.asarray(g0).any()


def test_steps_use_last_global_feature(loaded, head):
  """After prefill every tree step feeds fc([e; img_fc([h; g_last])])."""
  sd, d = loaded
  feats, embeds, mask, vision, root = make_batch(("two_images",))
  ctx = draft.PrefillContext(jnp.asarray(feats), jnp.asarray(embeds), jnp.asarray(mask),
                             jnp.asarray(vision), jnp.asarray(root), cache_len=P + 8)
  state, _ = jax.jit(d.drafter.start)(d.params, head, ctx)
  hid = np.random.default_rng(2).standard_normal((1, 1, H)).astype(np.float32)
  got = d.drafter.features_in(d.params, state, jnp.asarray(hid))
  want = np_linear(sd, "img_fc", np.concatenate([hid[0, 0], np.asarray(state.extra[0])]))
  np.testing.assert_allclose(np.asarray(got[0, 0]), want, atol=1e-5)
  assert np.abs(np.asarray(state.extra)).max() > 0


# ------------------------------------------------------------------ initialisation


def test_init_img_fc_identity_and_vispec_equals_eagle_without_images(head):
  cfg = draft.DraftConfig(kind="vispec", hidden_size=H, intermediate_size=FF, num_heads=NH,
                          num_kv_heads=NH, head_dim=HD, vocab_size=V, qkv_bias=True)
  params = draft.init_params(cfg, jax.random.PRNGKey(0))
  k = np.asarray(params["img_fc"]["kernel"])
  np.testing.assert_array_equal(k[:H], np.eye(H))
  np.testing.assert_array_equal(k[H:], 0)
  np.testing.assert_array_equal(np.asarray(params["img_fc"]["bias"]), 0)
  q = np.asarray(params["adaptor"]["q"])
  assert q.shape == (2, NH, HD) and 0.5 < q.std() * HD ** 0.5 < 2.0

  eagle_cfg = dataclasses.replace(cfg, kind="eagle")
  eagle_params = {k: v for k, v in params.items() if k in ("fc", "layer")}
  assert jax.tree.structure(eagle_params) == jax.tree.structure(draft.param_shapes(eagle_cfg))
  feats, embeds, mask, vision, root = make_batch(("no_image", "one_image"))
  vision[:] = False
  ctx = draft.PrefillContext(jnp.asarray(feats), jnp.asarray(embeds), jnp.asarray(mask),
                             jnp.asarray(vision), jnp.asarray(root), cache_len=P + 8)
  outs = []
  for drafter, p in [(vj.make_drafter(cfg), params), (vj.make_drafter(eagle_cfg), eagle_params)]:
    @jax.jit
    def run(p, ctx, drafter=drafter):
      state, lp0 = drafter.start(p, head, ctx)
      tokens = jnp.asarray([[3, 5], [7, 1]], jnp.int32)
      par = jnp.broadcast_to(state.last_hidden[:, None], (2, 2, H))
      lp1, h1, state = drafter.step(p, head, state, 0, 0, tokens, par,
                                    jnp.broadcast_to(jnp.eye(2, 4, dtype=bool), (2, 2, 4)))
      state, lp2 = drafter.commit(p, head, state, h1, tokens, jnp.asarray([2, 1], jnp.int32))
      return lp0, lp1, h1, lp2, state.last_hidden
    outs.append([np.asarray(a) for a in run(p, ctx)])
  for a, b in zip(*outs):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_medusa_heads_reuse_target_lm_head(head):
  cfg = draft.DraftConfig(kind="medusa", hidden_size=H, intermediate_size=FF, num_heads=NH,
                          num_kv_heads=NH, head_dim=HD, vocab_size=V)
  zero = draft.init_params(cfg, jax.random.PRNGKey(0))
  assert len(zero["heads"]) == 5 and all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(zero))
  params = layers.init_params(draft.param_shapes(cfg), jax.random.PRNGKey(1), std=0.3)
  drafter = vj.make_drafter(cfg)
  feats, embeds, mask, vision, root = make_batch(("no_image", "one_image"))
  ctx = draft.PrefillContext(jnp.asarray(feats), jnp.asarray(embeds), jnp.asarray(mask),
                             jnp.asarray(vision), jnp.asarray(root), cache_len=P)
  state, lp0 = drafter.start(params, head, ctx)

  def np_head(i, f):
    w, b = np.asarray(params["heads"][i]["kernel"]), np.asarray(params["heads"][i]["bias"])
    z = f @ w + b
    return np_logp(head["lm_head"]["kernel"], f + z / (1 + np.exp(-z)))
  np.testing.assert_allclose(np.asarray(lp0[1]), np_head(0, feats[1, -1]), atol=1e-5)
  lp, hid, _ = drafter.step(params, head, state, 2, 0, jnp.zeros((2, 3), jnp.int32), None, None)
  assert lp.shape == (2, 3, V)
  np.testing.assert_allclose(np.asarray(lp[1, 2]), np_head(3, feats[1, -1]), atol=1e-5)
  new = np.random.default_rng(0).standard_normal((2, 4, H)).astype(np.float32)
  state2, lpc = drafter.commit(params, head, state, jnp.asarray(new), jnp.zeros((2, 4), jnp.int32),
                               jnp.asarray([3, 0], jnp.int32))
  np.testing.assert_allclose(np.asarray(lpc[0]), np_head(0, new[0, 2]), atol=1e-5)
  np.testing.assert_allclose(np.asarray(state2[1]), feats[1, -1])  # n_valid 0 keeps the feature
  with pytest.raises(ValueError, match="Medusa head 5"):
    drafter.step(params, head, state, 4, 0, jnp.zeros((2, 3), jnp.int32), None, None)


# ------------------------------------------------------------ against a real target


@pytest.fixture(scope="module")
def target(tiny_qwen_dir):
  return vj.load_target(tiny_qwen_dir)


def test_draft_for_another_target(target, tmp_path):
  # Hidden size 32 vs the tiny target's 64.
  sd = official_state_dict()
  folder = write_official(tmp_path / "h", sd, official_config())
  with pytest.raises(vj.CheckpointError, match=r"hidden_size is 32 but the target's hidden_size is 64"):
    vj.load_draft(folder, target)
  # Right hidden size, wrong vocabulary.
  t = target.config.text
  sd = official_state_dict(h=t.hidden_size, v=t.vocab_size + 3)
  raw = official_config(hidden_size=t.hidden_size, vocab_size=t.vocab_size + 3)
  with pytest.raises(vj.CheckpointError, match=rf"vocab_size is {t.vocab_size + 3} but the "
                                               rf"target's vocab_size is {t.vocab_size}"):
    vj.load_draft(write_official(tmp_path / "v", sd, raw), target)


def test_embedding_copy_checked(target, tmp_path):
  t = target.config.text
  table = np.asarray(target.params["text"]["embed"])
  sd = official_state_dict(h=t.hidden_size, v=t.vocab_size)
  raw = official_config(hidden_size=t.hidden_size, vocab_size=t.vocab_size)
  sd["embed_tokens.weight"] = table.copy()
  folder = write_official(tmp_path / "ok", sd, raw)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    d = vj.load_draft(folder, target)
  assert "embed" not in d.params and d.config.kind == "vispec"
  sd["embed_tokens.weight"] = table + 1.0
  folder = write_official(tmp_path / "diff", sd, raw)
  with pytest.warns(UserWarning, match="differs from the target's embedding"):
    vj.load_draft(folder, target)
  with pytest.raises(vj.CheckpointError, match="differs from the target's embedding"):
    vj.load_draft(folder, target, embedding_check="error")
  sd["embed_tokens.weight"] = table[:-1]
  with pytest.raises(vj.CheckpointError, match=r"embed_tokens.weight has shape"):
    vj.load_draft(write_official(tmp_path / "shape", sd, raw), target)


@pytest.mark.parametrize("kind", ["vispec", "eagle"])
def test_commit_continues_prefill(loaded, head, kind):
  """Prefill on a prompt then committing its last two tokens = prefill on the longer prompt
  (cache, positions and, for ViSpec, the carried global feature agree)."""
  sd, d = loaded
  cfg = dataclasses.replace(d.config, kind=kind)
  params = d.params if kind == "vispec" else {k: d.params[k] for k in ("fc", "layer")}
  drafter = vj.make_drafter(cfg)
  rng = np.random.default_rng(11)
  n, runs = ROWS["two_images"]
  ids = rng.integers(0, V, n + 1).astype(np.int32)  # tokens t0..t15 and the root
  vision = np.zeros(n, bool)
  for s, e in runs:
    vision[s:e] = True
  embeds = head["embed"][ids[:n]].copy()
  embeds[vision] = rng.standard_normal((vision.sum(), H))
  feats = rng.standard_normal((n, H)).astype(np.float32)

  def ctx(m, pad):
    """The first m tokens, left-padded by `pad`, root = token m."""
    f = np.pad(feats[:m], ((pad, 0), (0, 0)))[None]
    e = np.pad(embeds[:m], ((pad, 0), (0, 0)))[None]
    mask = np.pad(np.ones(m, bool), (pad, 0))[None]
    vis = np.pad(vision[:m], (pad, 0))[None]
    return draft.PrefillContext(jnp.asarray(f), jnp.asarray(e), jnp.asarray(mask),
                                jnp.asarray(vis), jnp.asarray(ids[m:m + 1]), cache_len=m + pad + 8)
  full_state, full_lp = jax.jit(drafter.start)(params, head, ctx(n, 0))

  @jax.jit
  def short_then_commit(params, c):
    state, _ = drafter.start(params, head, c)
    new_feats = jnp.asarray(np.pad(feats[n - 2:n], ((0, 1), (0, 0))))[None]  # 2 real + 1 filler
    new_next = jnp.asarray(np.asarray([ids[n - 1], ids[n], 0], np.int32))[None]
    return drafter.commit(params, head, state, new_feats, new_next, jnp.asarray([2], jnp.int32))
  state, lp = short_then_commit(params, ctx(n - 2, 3))
  np.testing.assert_allclose(np.asarray(lp), np.asarray(full_lp), atol=1e-5)
  np.testing.assert_allclose(np.asarray(state.last_hidden), np.asarray(full_state.last_hidden),
                             atol=1e-5)
  assert int(state.position[0]) == int(full_state.position[0]) == n
  if kind == "vispec":
    np.testing.assert_allclose(np.asarray(state.extra), np.asarray(full_state.extra), atol=1e-6)
