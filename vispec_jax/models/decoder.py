"""A LLaMA/Qwen2-style decoder-only language model over a params pytree, shared by every target
family: pre-norm blocks of attention + gated MLP, a final RMSNorm, an (optionally tied) lm_head.

Params: {"embed": [V, E], "layers": [{"input_norm", "attn": {q,k,v,o}, "post_norm",
"mlp": {gate, up, down}}, ...], "norm": {"scale"}, "lm_head": {"kernel": [E, V]} (absent if tied)}.
KV cache: a list with one (k, v) pair per layer, each [B, K, S, D] (kv heads before slots, so
attention reads it without transposed copies).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vispec_jax import layers, sharding
from vispec_jax.checkpoints import TRANSPOSE, Transform
from vispec_jax.configs import TextConfig

Params = layers.Params
KVCache = list  # [(k [B, K, S, D], v [B, K, S, D]) per layer]


def init_cache(cfg: TextConfig, batch: int, length: int, dtype=jnp.float32) -> KVCache:
  shape = (batch, cfg.num_kv_heads, length, cfg.head_dim)
  zeros = lambda: sharding.constrain(jnp.zeros(shape, dtype), sharding.CACHE_AXES)
  return [(zeros(), zeros()) for _ in range(cfg.num_layers)]


def embed_tokens(params: Params, tokens: jax.Array, dtype=None) -> jax.Array:
  """int[B, T] -> [B, T, E]."""
  table = params["embed"]
  out = jnp.take(table, tokens, axis=0)
  return out if dtype is None else out.astype(dtype)


def forward(params: Params, cfg: TextConfig, x: jax.Array, positions: jax.Array, mask: jax.Array,
            cache: KVCache | None = None, write_index: jax.Array | None = None):
  """The decoder stack on input embeddings x [B, T, E] at positions int[B, T] (1-D RoPE) or
  int[3, B, T] (mRoPE); mask bool[B, T, T], or bool[B, T, S] with a per-layer (k, v) cache of S
  slots whose new keys/values go to `write_index` (scalar or [B]).
  Returns (hidden [B, T, E] after the final norm, new cache or None)."""
  cos, sin = layers.rope_angles(positions, cfg.head_dim, cfg.rope_theta, cfg.mrope_section)
  new_cache = []
  for i, lp in enumerate(params["layers"]):
    with jax.named_scope(f"layer{i}"):
      h = layers.rms_norm(x, lp["input_norm"], cfg.rms_norm_eps)
      a, c = layers.self_attention(
          h, lp["attn"], num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads,
          head_dim=cfg.head_dim, cos=cos, sin=sin, mask=mask,
          cache=None if cache is None else cache[i], write_index=write_index)
      x = x + a
      x = x + layers.gated_mlp(layers.rms_norm(x, lp["post_norm"], cfg.rms_norm_eps), lp["mlp"],
                               cfg.hidden_act)
      new_cache.append(c)
  return layers.rms_norm(x, params["norm"], cfg.rms_norm_eps), None if cache is None else new_cache


def logits(params: Params, hidden: jax.Array) -> jax.Array:
  """hidden [..., E] -> fp32 logits [..., V], through lm_head or the tied embedding."""
  if "lm_head" in params:
    w = params["lm_head"]["kernel"]
    return jnp.einsum("...e,ev->...v", hidden, w.astype(hidden.dtype),
                      preferred_element_type=jnp.float32)
  return jnp.einsum("...e,ve->...v", hidden, params["embed"].astype(hidden.dtype),
                    preferred_element_type=jnp.float32)


def param_shapes(cfg: TextConfig, dtype=jnp.float32) -> Params:
  """Shapes of every parameter (ShapeDtypeStruct leaves): the single declaration that init,
  checkpoint loading and sharding read."""
  e, f = cfg.hidden_size, cfg.intermediate_size
  nd, kd = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
  lin = lambda n_in, n_out, bias=False: layers.linear_shapes(n_in, n_out, bias, dtype)
  norm = lambda: {"scale": jax.ShapeDtypeStruct((e,), dtype)}
  layer = lambda: {
      "input_norm": norm(),
      "attn": {"q": lin(e, nd, cfg.qkv_bias), "k": lin(e, kd, cfg.qkv_bias),
               "v": lin(e, kd, cfg.qkv_bias), "o": lin(nd, e)},
      "post_norm": norm(),
      "mlp": {"gate": lin(e, f), "up": lin(e, f), "down": lin(f, e)},
  }
  p = {"embed": jax.ShapeDtypeStruct((cfg.vocab_size, e), dtype),
       "layers": [layer() for _ in range(cfg.num_layers)], "norm": norm()}
  if not cfg.tie_word_embeddings:
    p["lm_head"] = lin(e, cfg.vocab_size)
  return p


def add_hf_names(name_map, cfg: TextConfig, path: tuple = ("text",), prefix: str = "model.",
                 lm_head: str = "lm_head.weight"):
  """Registers the Hugging Face LLaMA/Qwen2 tensor names (canonical spelling) in `name_map`."""
  name_map.add(f"{prefix}embed_tokens.weight", path + ("embed",))
  name_map.add(f"{prefix}norm.weight", path + ("norm", "scale"))
  for i in range(cfg.num_layers):
    hf, ours = f"{prefix}layers.{i}.", path + ("layers", i)
    name_map.add(hf + "input_layernorm.weight", ours + ("input_norm", "scale"))
    name_map.add(hf + "post_attention_layernorm.weight", ours + ("post_norm", "scale"))
    for proj in "qkvo":
      add_linear(name_map, hf + f"self_attn.{proj}_proj", ours + ("attn", proj),
                 cfg.qkv_bias and proj != "o")
    for proj in ("gate", "up", "down"):
      add_linear(name_map, hf + f"mlp.{proj}_proj", ours + ("mlp", proj), bias=False)
  if cfg.tie_word_embeddings:
    name_map.ignore(lm_head)
  else:
    name_map.add(lm_head, path + ("lm_head", "kernel"), TRANSPOSE)


def add_linear(name_map, hf: str, ours: tuple, bias: bool = True):
  """Registers torch Linear `hf` (.weight [out, in], .bias) as our `ours` (kernel [in, out])."""
  name_map.add(hf + ".weight", ours + ("kernel",), TRANSPOSE)
  if bias:
    name_map.add(hf + ".bias", ours + ("bias",))


def conv_kernel(shape: tuple[int, ...]) -> Transform:
  """A patch embedding's Conv weight `shape` [E, C, *kernel] (stride = kernel) as a matmul
  kernel [C * prod(kernel), E]."""
  return Transform(lambda a: a.reshape(a.shape[0], -1).T, lambda a: a.T.reshape(shape))
