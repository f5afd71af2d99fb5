"""A KV cache that knows which of its slots hold keys, and the attention masks built from it.

Layout (the target's cache in vanilla and speculative decoding, and the drafters' caches): S
slots per row; slots [0, P) hold the left-padded prompt (`prompt_valid` says which count),
committed tokens follow from slot P up to `length`. New tokens (a decode step's token, a tree's
nodes, a draft commit) are written from slot `length` on; each sees the committed keys plus the
new slots its `vis` row allows (itself and its tree ancestors, or a chain's prefix).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


def prompt_mask(valid: jax.Array, slots: int) -> jax.Array:
  """bool[B, P, slots]: prompt slot q sees the valid prompt slots up to itself (a prefill)."""
  p = valid.shape[1]
  causal = jnp.arange(slots)[None, :] <= jnp.arange(p)[:, None]
  return causal[None] & jnp.pad(valid, ((0, 0), (0, slots - p)))[:, None, :]


def causal(n: int) -> jax.Array:
  """bool[n, n]: new token q sees the new tokens up to itself (a chain, e.g. a draft commit)."""
  return jnp.tril(jnp.ones((n, n), bool))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
  """Per-layer (k, v) [B, K, S, D] with the slots that hold keys. `length` is int32[B] (rows
  advance by different amounts), or one int32 when every row has the same length (vanilla
  decoding: a write is then one in-place dynamic-update-slice)."""
  layers: list             # [(k, v)] per layer: what the models' forward functions take
  prompt_valid: jax.Array  # bool[B, P]: prompt slots that count as keys
  length: jax.Array        # int32[B] or int32[]: the next free slot

  @property
  def slots(self) -> int:
    return self.layers[0][0].shape[2]

  def replace(self, **changes) -> "KVCache":
    return dataclasses.replace(self, **changes)

  def advance(self, n) -> "KVCache":
    """Commits the next n (int32[B] or int) slots."""
    return self.replace(length=self.length + n)

  def committed(self) -> jax.Array:
    """bool[B, S]: the prompt slots that count, then slots [P, length)."""
    p, s = self.prompt_valid.shape[1], self.slots
    slot = jnp.arange(s)[None, :]
    prompt = jnp.pad(self.prompt_valid, ((0, 0), (0, s - p)))
    return prompt | ((slot >= p) & (slot < jnp.reshape(self.length, (-1, 1))))

  def mask(self, vis: jax.Array) -> jax.Array:
    """bool[B, n, S] for n new tokens written from slot `length`: the committed keys, plus slot
    length + j for query q where vis[b, q, j] (vis: bool[B, n, W] or [n, W])."""
    committed = self.committed()
    b, s = committed.shape
    vis = jnp.broadcast_to(vis, (b,) + vis.shape[-2:])
    n, w = vis.shape[1:]
    rel = jnp.arange(s)[None, :] - jnp.reshape(self.length, (-1, 1))  # slot - length
    seen = jnp.take_along_axis(
        vis, jnp.broadcast_to(jnp.clip(rel, 0, w - 1)[:, None, :], (b, n, s)), axis=2)
    return committed[:, None, :] | (seen & ((rel >= 0) & (rel < w))[:, None, :])
