"""CLIP ViT vision tower (the LLaVA image encoder) over a params pytree.

Per `image_size`^2 tile: patch embed (a Conv2d as one matmul) -> class token -> learned positions
-> LayerNorm (`pre_layrnorm`) -> `num_layers` pre-LN blocks of full attention (no RoPE) and a
two-layer MLP. LLaVA reads an intermediate hidden state, so CLIP's final `post_layernorm` (it only
feeds the pooled output) is not in the params.

Params: {"patch_embed": {"kernel": [C*p*p, E]}, "class_embed": [E], "pos_embed": [1 + grid^2, E],
"pre_norm": {"scale", "bias"}, "layers": [{"norm1", "attn": {q,k,v,o with bias}, "norm2",
"mlp": {"fc1", "fc2"}}, ...]}.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vispec_jax import layers
from vispec_jax.configs import ClipVisionConfig
from vispec_jax.models import decoder

Params = layers.Params


def patchify(pixels: jax.Array, patch: int) -> jax.Array:
  """[N, C, H, W] -> [N, (H/p)*(W/p), C*p*p], row-major patches, each flattened (c, y, x) like
  the Conv2d weight [E, C, p, p]."""
  n, c, h, w = pixels.shape
  x = pixels.reshape(n, c, h // patch, patch, w // patch, patch)
  return x.transpose(0, 2, 4, 1, 3, 5).reshape(n, (h // patch) * (w // patch), c * patch * patch)


def hidden_states(params: Params, cfg: ClipVisionConfig, pixels: jax.Array,
                  num_layers: int | None = None) -> list[jax.Array]:
  """Hidden states [h_0, ..., h_num_layers], each [N, T, E], of normalised tiles pixels
  [N, C, S, S] (transformers' convention: h_0 the embeddings after the pre-LayerNorm, h_i block
  i's output); only the first `num_layers` blocks run (LLaVA reads the penultimate one)."""
  dtype = params["patch_embed"]["kernel"].dtype
  x = layers.linear(patchify(pixels.astype(dtype), cfg.patch_size), params["patch_embed"])
  n, _, e = x.shape
  cls = jnp.broadcast_to(params["class_embed"].astype(dtype), (n, 1, e))
  x = jnp.concatenate([cls, x], axis=1) + params["pos_embed"].astype(dtype)[None]
  x = layers.layer_norm(x, params["pre_norm"], cfg.layer_norm_eps)
  t = x.shape[1]
  mask = jnp.ones((1, t, t), bool)  # every token of a tile sees every other
  act = layers.activation(cfg.hidden_act)
  out = [x]
  for i, lp in enumerate(params["layers"][:num_layers]):
    with jax.named_scope(f"clip{i}"):
      a, _ = layers.self_attention(
          layers.layer_norm(x, lp["norm1"], cfg.layer_norm_eps), lp["attn"],
          num_heads=cfg.num_heads, num_kv_heads=cfg.num_heads, head_dim=cfg.head_dim,
          cos=None, sin=None, mask=mask)
      x = x + a
      h = layers.layer_norm(x, lp["norm2"], cfg.layer_norm_eps)
      x = x + layers.linear(act(layers.linear(h, lp["mlp"]["fc1"])), lp["mlp"]["fc2"])
    out.append(x)
  return out


def resolve_layer(index: int, cfg: ClipVisionConfig) -> int:
  """A (possibly negative) hidden-state index -> 0..num_layers, or ValueError."""
  n = cfg.num_layers + 1
  if not -n <= index < n:
    raise ValueError(f"vision feature layer {index} out of range for a {cfg.num_layers}-layer "
                     "tower")
  return index % n


# ------------------------------------------------------------- params and checkpoints


def param_shapes(cfg: ClipVisionConfig, dtype=jnp.float32) -> Params:
  e, f = cfg.hidden_size, cfg.intermediate_size
  lin = lambda n_in, n_out: layers.linear_shapes(n_in, n_out, True, dtype)
  ln = lambda: {k: jax.ShapeDtypeStruct((e,), dtype) for k in ("scale", "bias")}
  block = lambda: {"norm1": ln(), "norm2": ln(), "attn": {p: lin(e, e) for p in "qkvo"},
                   "mlp": {"fc1": lin(e, f), "fc2": lin(f, e)}}
  return {
      "patch_embed": {"kernel": jax.ShapeDtypeStruct((cfg.patch_dim, e), dtype)},
      "class_embed": jax.ShapeDtypeStruct((e,), dtype),
      "pos_embed": jax.ShapeDtypeStruct((cfg.grid ** 2 + 1, e), dtype),
      "pre_norm": ln(),
      "layers": [block() for _ in range(cfg.num_layers)],
  }


def add_hf_names(nm, cfg: ClipVisionConfig, path: tuple, prefix: str):
  """Registers transformers' CLIPVisionModel tensor names (`{prefix}embeddings.*`, ...)."""
  def norm(hf: str, ours: tuple):  # a LayerNorm
    nm.add(hf + ".weight", ours + ("scale",))
    nm.add(hf + ".bias", ours + ("bias",))
  nm.add(prefix + "embeddings.patch_embedding.weight", path + ("patch_embed", "kernel"),
         decoder.conv_kernel((cfg.hidden_size, cfg.in_channels, cfg.patch_size, cfg.patch_size)))
  nm.add(prefix + "embeddings.class_embedding", path + ("class_embed",))
  nm.add(prefix + "embeddings.position_embedding.weight", path + ("pos_embed",))
  nm.ignore(prefix + "embeddings.position_ids")  # a buffer some older saves include
  norm(prefix + "pre_layrnorm", path + ("pre_norm",))  # sic: CLIP's spelling
  nm.ignore(prefix + "post_layernorm.weight")  # feeds only CLIP's pooled output
  nm.ignore(prefix + "post_layernorm.bias")
  for i in range(cfg.num_layers):
    hf, ours = f"{prefix}encoder.layers.{i}.", path + ("layers", i)
    norm(hf + "layer_norm1", ours + ("norm1",))
    norm(hf + "layer_norm2", ours + ("norm2",))
    for n, o in (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v"), ("out_proj", "o")):
      decoder.add_linear(nm, hf + f"self_attn.{n}", ours + ("attn", o))
    for n in ("fc1", "fc2"):
      decoder.add_linear(nm, hf + f"mlp.{n}", ours + ("mlp", n))
