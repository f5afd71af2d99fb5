"""Token selection: greedy, or sampling with temperature, top-k and top-p; per-row PRNG keys.

The filters match transformers' logits warpers (temperature, then top-k, then top-p, keeping at
least one token). Whether a filter runs is static (`top_k > 0`, `top_p < 1`), so a disabled
filter costs nothing in the compiled program.

Randomness is per row: every row of a batch carries its own PRNG key (`keys`: [B] typed keys or
[B, 2] raw uint32 keys) and splits it once per step (`split_rows`), so the numbers a row draws
never depend on its batch neighbours or on the batch size. One key for the whole batch gives
row b the key `fold_in(key, b)` (`row_keys`); `seeds` give row b `PRNGKey(seeds[b])`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

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


def argmax(logits: jax.Array) -> jax.Array:
  """int32 jnp.argmax over the last axis (first index of the max, NaN counting as the max), as
  two plain reductions: XLA-CPU's index-carrying argmax reduce is 5-9x slower over a vocabulary
  (docs/benchmarks.md section 8)."""
  top = jnp.max(logits, axis=-1, keepdims=True)
  hit = (logits == top) | jnp.isnan(logits)
  v = logits.shape[-1]
  return jnp.min(jnp.where(hit, jnp.arange(v, dtype=jnp.int32), v), axis=-1)


def select_tokens(logits: jax.Array, keys: jax.Array | None, *, greedy: bool, temperature=1.0,
                  top_k: int = 0, top_p: float | None = None) -> jax.Array:
  """logits [B, V] -> int32[B]. keys: one PRNG key per row (or one key, see `row_keys`)."""
  if greedy:
    return argmax(logits)
  warped = warp_logits(logits, temperature, top_k, top_p)
  keys = row_keys(keys, logits.shape[0])
  return jax.vmap(jax.random.categorical)(keys, warped).astype(jnp.int32)


# ------------------------------------------------------------------------ per-row keys


def _is_typed(key) -> bool:
  return jnp.issubdtype(key.dtype, jax.dtypes.prng_key)


def _raw_key_shape() -> tuple[int, ...]:
  # (2,) for the default threefry implementation; a shape only, nothing is computed.
  return tuple(jax.eval_shape(lambda: jax.random.PRNGKey(0)).shape)


def key_batch_ndim(key) -> int:
  """How many leading (batch) axes a key array has: 0 for one key, 1 for per-row keys."""
  return key.ndim if _is_typed(key) else key.ndim - len(_raw_key_shape())


def row_keys(key: jax.Array, batch_size: int) -> jax.Array:
  """Per-row keys: `key` itself when it already has one key per row, else row b gets
  `fold_in(key, b)` (works inside jit: the choice depends on shapes only)."""
  if key_batch_ndim(key) == 1:
    return key
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(batch_size, dtype=jnp.uint32))


def split_rows(keys: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Splits every row's key: (next per-row keys, per-row subkeys for this step)."""
  both = jax.vmap(jax.random.split)(keys)
  return both[:, 0], both[:, 1]


def request_keys(batch_size: int, key=None, seeds=None, keys=None) -> jax.Array:
  """Per-row keys [B] for a generation call from at most one of: `key` (one PRNG key for the
  batch; row b uses fold_in(key, b)), `seeds` (B integers in [0, 2**32); row b uses
  PRNGKey(seeds[b]), so a row samples the same tokens alone and in any batch) or `keys` (B keys:
  [B] typed or [B, 2] raw uint32). None of them: key PRNGKey(0)."""
  given = [n for n, v in (("key", key), ("seeds", seeds), ("keys", keys)) if v is not None]
  if len(given) > 1:
    raise ValueError(f"pass at most one of key=, seeds=, keys=; got {' and '.join(given)}")
  if seeds is not None:
    s = np.asarray(seeds)
    if s.shape != (batch_size,):
      raise ValueError(f"seeds must be one integer per row of the batch ({batch_size} rows), "
                       f"got shape {s.shape}")
    if s.dtype == bool or not np.issubdtype(s.dtype, np.integer):
      raise ValueError(f"seeds must be integers, got dtype {s.dtype}")
    if s.size and (s.min() < 0 or s.max() >= 2 ** 32):
      raise ValueError(f"seeds must be in [0, 2**32), got {s.min()}..{s.max()}")
    return jax.vmap(jax.random.PRNGKey)(jnp.asarray(s.astype(np.uint32)))
  if keys is not None:
    k = _key_array("keys", keys)
    if key_batch_ndim(k) != 1 or k.shape[0] != batch_size:
      raise ValueError(f"keys must be one PRNG key per row ({batch_size} rows): shape "
                       f"({batch_size},) typed or ({batch_size}, {_raw_key_shape()[0]}) raw, got "
                       f"{k.dtype} {tuple(k.shape)}")
    return k
  k = jax.random.PRNGKey(0) if key is None else _key_array("key", key)
  if key_batch_ndim(k) != 0:
    raise ValueError(f"key must be one PRNG key (jax.random.key(n) or PRNGKey(n)), got shape "
                     f"{tuple(k.shape)}; pass one key per row as keys=")
  return row_keys(k, batch_size)


def _key_array(name: str, key) -> jax.Array:
  if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
    raise ValueError(f"{name} must be a PRNG key, got the integer {key}: use "
                     f"jax.random.key({key}) (or seeds= for one integer per row)")
  if not hasattr(key, "dtype"):
    raise ValueError(f"{name} must be a PRNG key array, got {type(key).__name__}")
  k = jnp.asarray(key)
  raw = _raw_key_shape()
  if not _is_typed(k) and (k.dtype != jnp.uint32 or k.ndim < len(raw)
                           or tuple(k.shape[-len(raw):]) != raw):
    raise ValueError(f"{name} must be a PRNG key (typed, or raw uint32 of shape {raw}), got "
                     f"{k.dtype} {tuple(k.shape)}")
  return k
