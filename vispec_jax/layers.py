"""Shared transformer layers as plain functions over params pytrees.

Written once and used by every model family (target LMs, vision towers, the draft).
Einsum letters: B batch, T query length, S key length (cache), N query heads, K kv heads,
G query heads per kv head, D head dim, E embed, F mlp hidden.

Params layout: a linear layer is `{"kernel": [in, out], "bias": [out]}` (bias optional);
a norm is `{"scale": [E]}`. dtype policy: params may be bf16; norms, RoPE and softmax run in
fp32 and results are cast back to the activation dtype.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Params = dict[str, Any]

NEG_INF = -1e30  # additive mask value; finite so fully-masked rows give uniform, not NaN


def linear_shapes(n_in: int, n_out: int, bias: bool, dtype) -> Params:
  """The params of one `linear` as ShapeDtypeStruct leaves: kernel [n_in, n_out] (+ bias)."""
  p = {"kernel": jax.ShapeDtypeStruct((n_in, n_out), dtype)}
  if bias:
    p["bias"] = jax.ShapeDtypeStruct((n_out,), dtype)
  return p


def linear(x: jax.Array, p: Params) -> jax.Array:
  """x[..., in] @ kernel[in, out] (+ bias)."""
  y = jnp.einsum("...i,io->...o", x, p["kernel"].astype(x.dtype))
  if "bias" in p:
    y = y + p["bias"].astype(y.dtype)
  return y


def rms_norm(x: jax.Array, p: Params, eps: float) -> jax.Array:
  """RMSNorm in fp32; the scale multiplies after casting back (as Qwen/LLaMA do)."""
  xf = x.astype(jnp.float32)
  xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
  return p["scale"].astype(x.dtype) * xf.astype(x.dtype)


def layer_norm(x: jax.Array, p: Params, eps: float) -> jax.Array:
  """LayerNorm with scale and bias, in fp32."""
  xf = x.astype(jnp.float32)
  mean = jnp.mean(xf, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
  y = (xf - mean) * jax.lax.rsqrt(var + eps)
  return (y * p["scale"].astype(jnp.float32) + p["bias"].astype(jnp.float32)).astype(x.dtype)


ACTIVATIONS = {
    "silu": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
}


def activation(name: str):
  if name not in ACTIVATIONS:
    raise ValueError(f"unsupported activation {name!r}; known: {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


def gated_mlp(x: jax.Array, p: Params, act: str = "silu") -> jax.Array:
  """SwiGLU-style MLP: down(act(gate(x)) * up(x))."""
  return linear(activation(act)(linear(x, p["gate"])) * linear(x, p["up"]), p["down"])


# ----------------------------------------------------------------------------- RoPE


def rope_inv_freq(rot_dim: int, theta: float) -> jax.Array:
  """1 / theta^(2i/rot_dim) for i in [0, rot_dim/2)."""
  return 1.0 / (theta ** (jnp.arange(0, rot_dim, 2, dtype=jnp.float32) / rot_dim))


def rope_angles(positions: jax.Array, head_dim: int, theta: float,
                mrope_section: tuple[int, ...] | None = None) -> tuple[jax.Array, jax.Array]:
  """cos/sin tables for rotate-half RoPE.

  Args:
    positions: int[B, T] (1-D RoPE) or int[3, B, T] (Qwen2.5-VL mRoPE: t, h, w rows).
    mrope_section: for mRoPE, how many frequency pairs take their angle from row t, h, w.
  Returns:
    cos, sin: float32[B, T, head_dim].
  """
  inv = rope_inv_freq(head_dim, theta)  # [D/2]
  if positions.ndim == 3:
    assert mrope_section is not None and sum(mrope_section) == head_dim // 2
    freqs = positions.astype(jnp.float32)[..., None] * inv  # [3, B, T, D/2]
    # Frequency pair f takes its angle from position row (section index of f) % 3.
    row = [i % 3 for i, n in enumerate(mrope_section) for _ in range(n)]
    select = jax.nn.one_hot(jnp.array(row), 3, dtype=jnp.float32).T  # [3, D/2]
    freqs = jnp.sum(freqs * select[:, None, None, :], axis=0)  # [B, T, D/2]
  else:
    freqs = positions.astype(jnp.float32)[..., None] * inv  # [B, T, D/2]
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotate-half RoPE. x: [..., T, N, D]; cos/sin: [..., T, D] (broadcast over heads)."""
  xf = x.astype(jnp.float32)
  half = x.shape[-1] // 2
  rot = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
  out = xf * cos[..., None, :] + rot * sin[..., None, :]
  return out.astype(x.dtype)


# ------------------------------------------------------------------------ attention


ATTENTION_BLOCK = 256  # cache slots per block of the blocked (flash-decoding style) attention


def _fold_queries(q: jax.Array, kv_heads: int) -> jax.Array:
  """[B, T, N, D] -> [B, K, T*G, D]: each kv head's queries as one row block, so both attention
  einsums are plain batched matmuls over a [B, K, S, D] cache (no transposed copy of K or V)."""
  b, t, n, d = q.shape
  return q.reshape(b, t, kv_heads, n // kv_heads, d).transpose(0, 2, 1, 3, 4).reshape(
      b, kv_heads, t * (n // kv_heads), d)


def _masked_logits(qf: jax.Array, k: jax.Array, mask: jax.Array) -> jax.Array:
  """fp32 logits [B, K, T*G, S] of folded queries against keys [B, K, S, D]; mask [B, T, S]."""
  b, kh, q, d = qf.shape
  t, s = mask.shape[-2], k.shape[2]
  logits = jnp.einsum("bkqd,bksd->bkqs", qf, k, preferred_element_type=jnp.float32) * (d ** -0.5)
  logits = logits.reshape(b, kh, t, q // t, s)
  mask = jnp.broadcast_to(mask, (b, t, s))
  return jnp.where(mask[:, None, :, None, :], logits, NEG_INF).reshape(b, kh, q, s)


def live_slots(mask: jax.Array) -> jax.Array:
  """int32 scalar: 1 + the highest key slot any query of any row may attend (0 if none)."""
  visible = jnp.any(mask.reshape(-1, mask.shape[-1]), axis=0)
  return jnp.max(jnp.where(visible, jnp.arange(mask.shape[-1], dtype=jnp.int32) + 1, 0))


def _blocked_attention(qf, k, v, mask, block: int):
  """Online-softmax attention over cache blocks of `block` slots, stopping after the block that
  holds the last live slot (`live_slots(mask)`), so a step costs what the live length costs, not
  the allocated one. Blocks past a row's last key add exactly zero weight, so a row's result does
  not depend on how many blocks the batch needs."""
  b, kh, q, d = qf.shape
  s = k.shape[2]
  n_blocks = jnp.maximum((live_slots(mask) + block - 1) // block, 1)
  mask = jnp.broadcast_to(mask, (b,) + mask.shape[1:])  # once, not per block

  def body(i, carry):
    m, l, acc = carry
    start = jnp.minimum(i * block, s - block)  # the last block may overlap the one before it
    kb = jax.lax.dynamic_slice_in_dim(k, start, block, axis=2)
    vb = jax.lax.dynamic_slice_in_dim(v, start, block, axis=2)
    mb = jax.lax.dynamic_slice_in_dim(mask, start, block, axis=2)
    mb = mb & (start + jnp.arange(block) >= i * block)  # slots before i * block: already counted
    logits = _masked_logits(qf, kb, mb)
    m_new = jnp.maximum(m, jnp.max(logits, axis=-1))
    p = jnp.exp(logits - m_new[..., None])
    scale = jnp.exp(m - m_new)
    l = l * scale + jnp.sum(p, axis=-1)
    pv = jnp.einsum("bkqs,bksd->bkqd", p.astype(v.dtype), vb, preferred_element_type=jnp.float32)
    return m_new, l, acc * scale[..., None] + pv

  init = (jnp.full((b, kh, q), NEG_INF, jnp.float32), jnp.zeros((b, kh, q), jnp.float32),
          jnp.zeros((b, kh, q, d), jnp.float32))
  _, l, acc = jax.lax.fori_loop(0, n_blocks, body, init)
  return acc / l[..., None]


def dot_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
                  block: int | None = None) -> jax.Array:
  """Grouped-query attention with an arbitrary boolean mask.

  Args:
    q: [B, T, N, D]; k, v: [B, K, S, D] (the cache layout) with N a multiple of K.
    mask: bool[B, T, S] (or broadcastable), True where a query may attend a key.
    block: for S > 2 * block, attend block by block up to the last live slot
      (`_blocked_attention`; cached attention); otherwise (or None) one softmax over all S.
  Returns:
    [B, T, N, D] in q's dtype; logits and softmax in fp32.
  """
  b, t, n, d = q.shape
  kh, s = k.shape[1], k.shape[2]
  qf = _fold_queries(q, kh)
  if block is not None and s > 2 * block:
    # Only for long caches: on a 2-core CPU the block loop's overhead made a step with a
    # 256-slot cache slower than one softmax over it (docs/benchmarks.md section 8).
    out = _blocked_attention(qf, k, v, mask, block)
  else:
    probs = jax.nn.softmax(_masked_logits(qf, k, mask), axis=-1).astype(v.dtype)
    out = jnp.einsum("bkqs,bksd->bkqd", probs, v, preferred_element_type=jnp.float32)
  out = out.astype(q.dtype).reshape(b, kh, t, n // kh, d).transpose(0, 2, 1, 3, 4)
  return out.reshape(b, t, n, d)


def write_cache(cache: jax.Array, new: jax.Array, index: jax.Array) -> jax.Array:
  """Writes new[B, K, T, D] into cache[B, K, S, D] at slot `index`.

  `index` is a scalar (all rows write at the same slot: one in-place dynamic-update-slice) or
  int[B] (each row at its own slot, e.g. after speculative rounds of different lengths).
  """
  index = jnp.asarray(index, jnp.int32)
  new = new.astype(cache.dtype)
  if index.ndim == 0:
    return jax.lax.dynamic_update_slice_in_dim(cache, new, index, axis=2)
  return jax.vmap(lambda c, n, i: jax.lax.dynamic_update_slice_in_dim(c, n, i, axis=1))(
      cache, new, index)


def self_attention(x: jax.Array, p: Params, *, num_heads: int, num_kv_heads: int, head_dim: int,
                   cos: jax.Array | None, sin: jax.Array | None, mask: jax.Array,
                   cache: tuple[jax.Array, jax.Array] | None = None,
                   write_index: jax.Array | None = None):
  """Attention block: q/k/v projections, RoPE, optional KV cache, output projection.

  Without a cache, keys are the T new tokens (mask: [B, T, T]). With a cache (k, v: [B, K, S, D])
  the new keys/values are written at `write_index` first and queries attend over the S slots
  (mask: [B, T, S]) block by block up to the last live one; this is how prefill, decode, tree
  verification and the draft share one code path.
  Returns (output [B, T, E], new cache or None).
  """
  b, t, _ = x.shape
  q = linear(x, p["q"]).reshape(b, t, num_heads, head_dim)
  k = linear(x, p["k"]).reshape(b, t, num_kv_heads, head_dim)
  v = linear(x, p["v"]).reshape(b, t, num_kv_heads, head_dim)
  if cos is not None:  # None: no rotary embedding (e.g. CLIP)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
  k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, K, T, D]
  block = None
  if cache is not None:
    cache = (write_cache(cache[0], k, write_index), write_cache(cache[1], v, write_index))
    k, v = cache
    block = ATTENTION_BLOCK
  out = dot_attention(q, k, v, mask, block)
  return linear(out.reshape(b, t, num_heads * head_dim), p["o"]), cache


def init_params(shapes, key: jax.Array, std: float = 0.02):
  """Random params for a tree of ShapeDtypeStruct: norm scales 1, biases 0, the rest N(0, std).

  Drawn on the host with NumPy (seeded from `key`): one jax.random program per parameter shape
  would compile dozens of tiny programs.
  """
  rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
  leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
  out = []
  for path, s in leaves:
    name = getattr(path[-1], "key", None)
    if name == "scale":
      value = np.ones(s.shape, np.float32)
    elif name == "bias":
      value = np.zeros(s.shape, np.float32)
    else:
      value = std * rng.standard_normal(s.shape, np.float32)
    out.append(jnp.asarray(value, s.dtype))
  return jax.tree_util.tree_unflatten(treedef, out)
