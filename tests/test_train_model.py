"""The training math of train/model.py against direct computations with the library's draft:
which positions are supervised, the anti-shortcut passes, the per-depth evaluation (checked
against a step-by-step rollout), noise, and the loss against the loss terms."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vispec_jax as vj
from train import losses, model
from vispec_jax import draft as draft_lib
from vispec_jax.configs import TextConfig

E, HEADS, V, L = 32, 4, 40, 14
TEXT = TextConfig(vocab_size=V, hidden_size=E, intermediate_size=48, num_layers=1,
                  num_heads=HEADS, num_kv_heads=HEADS, head_dim=E // HEADS)


def make_spec(kind, **kw):
  cfg = vj.DraftConfig.for_target(TEXT, kind=kind, medusa_heads=3)
  return model.Spec(drafter=vj.make_drafter(cfg), text=TEXT,
                    weights=(("prob_l1", 10.0), ("listmle", 0.1)), **kw)


def make_params(spec, seed=0):
  params = draft_lib.init_params(spec.drafter.cfg, jax.random.PRNGKey(seed))
  rng = np.random.default_rng(seed)
  # Larger weights than the init's 0.02, so the draft's outputs vary with its inputs.
  return jax.tree.map(lambda p: jnp.asarray(p + 0.1 * rng.standard_normal(p.shape), p.dtype),
                      params)


@pytest.fixture
def batch():
  rng = np.random.default_rng(1)
  lengths = np.array([L, L - 3])
  attn = np.arange(L)[None] < lengths[:, None]
  answer = attn & (np.arange(L)[None] >= 8)
  vision_index = np.full((2, L), -1, np.int32)
  vision_index[:, 2:5] = np.arange(3)  # tokens 2..4 are an image
  return {"attention_mask": jnp.asarray(attn), "answer": jnp.asarray(answer),
          "lengths": jnp.asarray(lengths, jnp.int32), "vision_index": jnp.asarray(vision_index),
          "f": jnp.asarray(rng.normal(size=(2, L, E)), jnp.float32),
          "e": jnp.asarray(0.5 * rng.normal(size=(2, L, E)), jnp.float32)}


def test_position_mask_supervises_each_answer_token_once(batch):
  m = np.asarray(model.position_mask(batch, 1, 2))
  # Position i predicts token i + 2: rows are supervised from 8 - 2 to length - 3.
  np.testing.assert_array_equal(np.flatnonzero(m[0]), np.arange(6, L - 2))
  np.testing.assert_array_equal(np.flatnonzero(m[1]), np.arange(6, L - 5))
  # Medusa head 1 (shift 2) predicts token i + 3.
  np.testing.assert_array_equal(np.flatnonzero(model.position_mask(batch, 2, 2)[0]),
                                np.arange(5, L - 3))


def test_draft_inputs_shift_by_one(batch):
  nxt, slots = model.draft_inputs(batch, batch["e"])
  np.testing.assert_array_equal(nxt[0, :-1], batch["e"][0, 1:])
  assert not np.any(nxt[1, L - 4:])  # past the row's end: zeros, as the reference pads
  np.testing.assert_array_equal(np.flatnonzero(slots[0]), [1, 2, 3])  # token i + 1 is image


def test_noise_is_uniform_and_scaled_by_length(batch):
  spec = make_spec("eagle", noise_scale=0.2, noise_ref_len=512)
  f = jnp.zeros((2, L, E))
  out = np.asarray(model.add_noise(spec, jax.random.PRNGKey(0), f, batch["lengths"]))
  for row, n in enumerate(np.asarray(batch["lengths"])):
    half = 0.5 * 0.2 * 512 / n
    assert np.all(np.abs(out[row]) <= half) and np.abs(out[row]).max() > 0.9 * half


def test_passes_feed_back_shifted_predictions(batch):
  spec = make_spec("vispec", mtp_steps=2)
  params = make_params(spec)
  nxt, slots = model.draft_inputs(batch, batch["e"])
  hs, shifts = model.passes(spec, params, batch["f"], nxt, batch, slots)
  assert hs.shape == (3, 2, L, E) and shifts == (1, 1, 1)
  fwd = lambda feats: spec.drafter.prompt_forward(params, feats, nxt, batch["attention_mask"],
                                                  slots)[0]
  h = fwd(batch["f"])
  np.testing.assert_allclose(hs[0], h, rtol=1e-4, atol=1e-4)
  for k in (1, 2):
    h = fwd(jnp.concatenate([batch["f"][:, :1], h[:, :-1]], axis=1))
    np.testing.assert_allclose(hs[k], h, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["eagle", "vispec"])
def test_chain_hidden_equals_step_by_step_rollout(batch, kind):
  spec = make_spec(kind)
  params = make_params(spec, seed=2)
  nxt, slots = model.draft_inputs(batch, batch["e"])
  attn = batch["attention_mask"]
  depth = 3
  hs = model.chain_hidden(spec, params, batch["f"], nxt, attn, slots, depth)
  fwd = jax.jit(lambda g: spec.drafter.prompt_forward(params, g, nxt, attn, slots)[0])
  lengths = np.asarray(batch["lengths"])
  for k in range(depth):
    for t in range(5 + k, L):  # chains that start after the image
      g = np.array(batch["f"])
      s = t - k
      for m in range(1, k + 1):  # feed the draft its own output, one position at a time
        g[:, s + m] = np.asarray(fwd(jnp.asarray(g)))[:, s + m - 1]
      want = np.asarray(fwd(jnp.asarray(g)))[:, t]
      for row in range(2):
        if t < lengths[row]:
          np.testing.assert_allclose(hs[k][row, t], want[row], rtol=1e-4, atol=1e-4,
                                     err_msg=str((k, t, row)))


def test_depth_accuracy_step_one_is_the_pass_accuracy(batch):
  spec = make_spec("vispec")
  params = make_params(spec, seed=3)
  head = {"embed": jnp.asarray(np.random.default_rng(4).normal(size=(V, E)), jnp.float32)}
  acc = model.depth_accuracy(spec, params, head, batch["f"], batch["e"], batch, 3)
  _, metrics = model.loss_fn(spec, params, head, batch["f"], batch["e"], batch,
                             jax.random.PRNGKey(0))
  np.testing.assert_allclose(acc["acc_1"], metrics["acc_1"], atol=1e-6)
  assert set(acc) == {"acc_1", "acc_2", "acc_3"}


def test_loss_fn_is_the_weighted_terms(batch):
  spec = make_spec("medusa")
  params = make_params(spec, seed=5)
  head = {"embed": jnp.asarray(np.random.default_rng(6).normal(size=(V, E)), jnp.float32)}
  total, metrics = model.loss_fn(spec, params, head, batch["f"], batch["e"], batch,
                                 jax.random.PRNGKey(0))
  # Pool the three heads by hand: head k on f_i against p_{i+k+1}.
  p_all = jax.nn.softmax(batch["f"] @ head["embed"].T)
  zs, ps, ms = [], [], []
  for k in range(3):
    h = vj.draft.medusa.head_forward(params, k, batch["f"])
    zs.append(h @ head["embed"].T)
    ps.append(model.shift_left(p_all, k + 1))
    ms.append(model.position_mask(batch, k + 1, 2))
  z, p, m = jnp.stack(zs), jnp.stack(ps), jnp.stack(ms)
  l1 = losses.masked_mean(losses.prob_l1(z, p), m)
  lm = losses.masked_mean(losses.listmle(z, p), m)
  np.testing.assert_allclose(metrics["loss/prob_l1"], l1, rtol=1e-5)
  np.testing.assert_allclose(metrics["loss/listmle"], lm, rtol=1e-5)
  np.testing.assert_allclose(total, 10 * l1 + 0.1 * lm, rtol=1e-5)
  assert dataclasses.replace(spec).kind == "medusa"


def test_training_shardings_on_7b_shapes():
  """Draft and target shardings from the library's logical-axis table on the shapes of
  Qwen2.5-VL-7B (nothing allocated), for a (data, fsdp, tensor) = (2, 8, 4) mesh; the batch is
  split over data x fsdp."""
  from jax.sharding import PartitionSpec as P
  from train import sharding
  from vispec_jax import sharding as vs
  from vispec_jax.models import decoder
  mesh = vs.MeshShape(data=2, fsdp=8, tensor=4)
  text = TextConfig(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28,
                    num_heads=28, num_kv_heads=4, head_dim=128, qkv_bias=True)
  dcfg = vj.DraftConfig.for_target(text, kind="vispec")
  specs = vs.param_specs(draft_lib.param_shapes(dcfg), mesh, dcfg.head_dim, sharding.rules())
  assert specs["layer"]["attn"]["q"]["kernel"] == P("fsdp", "tensor")
  assert specs["layer"]["attn"]["o"]["kernel"] == P("tensor", "fsdp")
  assert specs["layer"]["mlp"]["down"]["kernel"] == P("tensor", "fsdp")
  assert specs["layer"]["post_norm"]["scale"] == P(None)
  head = vs.param_specs(decoder.param_shapes(text), mesh, 128, sharding.rules())
  assert head["embed"] == P("tensor", "fsdp") and head["lm_head"]["kernel"] == P("fsdp", "tensor")
  assert sharding.batch_divisor(mesh) == 16
  assert sharding.rules({"embed": None})["embed"] is None
  with pytest.raises(ValueError, match="unknown logical axis"):
    sharding.rules({"nope": "data"})


@pytest.mark.parametrize("name,arg,kind", [("tiny_qwen", None, "vispec"),
                                           ("tiny_qwen", "stage=1", "eagle"),
                                           ("tiny_qwen", "draft=medusa,runlocal", "medusa"),
                                           ("qwen2_5_vl_7b", None, "vispec"),
                                           ("qwen2_5_vl_7b", "stage=1", "eagle")])
def test_configs(name, arg, kind):
  import importlib
  c = importlib.import_module(f"configs.{name}").get_config(arg)
  assert c.draft.kind == kind
  w = dict(c.loss.weights)
  if arg and "stage=1" in arg:
    assert w == {"feature_smooth_l1": 1.0, "soft_ce": 0.1, "prob_l1": 0.0, "listmle": 0.01}
    assert c.loss.mtp_steps == 0
  else:
    assert w == {"feature_smooth_l1": 0.0, "soft_ce": 0.0, "prob_l1": 10.0, "listmle": 0.1}
  assert (c.optim.b1, c.optim.b2) == (0.9, 0.95)
  with pytest.raises(ValueError, match="unknown config arg"):
    importlib.import_module(f"configs.{name}").get_config("nope=1")
