"""Token selection: greedy, or sampling with temperature, top-k and top-p.

The filters match transformers' logits warpers (temperature, then top-k, then top-p, keeping at
least one token). Whether a filter runs is static (`top_k > 0`, `top_p < 1`), so a disabled
filter costs nothing in the compiled program.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vispec_jax.layers import NEG_INF


def warp_logits(logits: jax.Array, temperature, top_k: int, top_p: float | None) -> jax.Array:
  """fp32 logits [..., V] -> filtered, temperature-scaled logits (masked entries NEG_INF)."""
  logits = logits.astype(jnp.float32) / temperature
  if top_k > 0:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, NEG_INF, logits)
  if top_p is not None:  # None: filter disabled (static); else a value, possibly traced
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep = mass_before < top_p  # smallest prefix (by descending prob) reaching top_p
    keep = keep.at[..., 0].set(True)
    threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, NEG_INF, logits)
  return logits


def target_probs(logits: jax.Array, temperature, top_k: int = 0, top_p: float | None = None):
  """The distribution vanilla sampling draws from (used by lossless speculative acceptance)."""
  return jax.nn.softmax(warp_logits(logits, temperature, top_k, top_p), axis=-1)


def select_tokens(logits: jax.Array, key: jax.Array | None, *, greedy: bool, temperature=1.0,
                  top_k: int = 0, top_p: float | None = None) -> jax.Array:
  """logits [B, V] -> int32[B]."""
  if greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return jax.random.categorical(key, warp_logits(logits, temperature, top_k, top_p)).astype(jnp.int32)
