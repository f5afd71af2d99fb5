"""Medusa heads baseline (the reference's `vispec/model/cnets_medusa.py`).

`medusa_heads` ResBlocks `x + silu(W x + b)` on the target's last-layer feature, each read out
through the target's frozen lm_head (as in the reference: no vocabulary projection of its own).
Head i predicts the token i + 1 places after the root, so the nodes fed at tree level i get their
children from head i + 1; all nodes of a level share one distribution, there is no cache, and a
tree is at most `medusa_heads` deep.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from vispec_jax import layers
from vispec_jax.draft.base import DraftConfig, PrefillContext, last_committed, log_probs


def head_forward(params, i: int, features: jax.Array) -> jax.Array:
  """Medusa head i: x + silu(W x + b), [..., E] -> [..., E]."""
  return features + jax.nn.silu(layers.linear(features, params["heads"][i]))


@dataclasses.dataclass(frozen=True)
class MedusaDrafter:
  """The drafter protocol over Medusa heads. State: the root's target feature f [B, E]."""
  cfg: DraftConfig

  def root_hidden(self, state):
    return state

  def _head_logp(self, params, head, level: int, feature):
    if level >= self.cfg.medusa_heads:
      raise ValueError(f"tree needs Medusa head {level} but the draft has "
                       f"{self.cfg.medusa_heads} heads: use a tree at most "
                       f"{self.cfg.medusa_heads} tokens deep")
    return log_probs(head, head_forward(params, level, feature))

  def start(self, params, head, ctx: PrefillContext):
    f = ctx.features[:, -1]
    return f, self._head_logp(params, head, 0, f)

  def step(self, params, head, state, level, offset, tokens, parent_hidden, scratch_mask):
    del offset, parent_hidden, scratch_mask
    b, n = tokens.shape
    logp = self._head_logp(params, head, level + 1, state)  # [B, V], the same for every node
    return (jnp.broadcast_to(logp[:, None], (b, n, logp.shape[-1])),
            jnp.broadcast_to(state[:, None], (b, n, state.shape[-1])), state)

  def commit(self, params, head, state, features, next_tokens, n_valid):
    del next_tokens
    f = last_committed(features, n_valid, state)
    return f, self._head_logp(params, head, 0, f)
