"""The EAGLE drafter: one decoder layer over fc([embedding; feature]), text only (image tokens
are ordinary positions with their vision embeddings). ViSpec's drafter extends it (`vispec.py`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from vispec_jax import sharding
from vispec_jax.models import decoder
from vispec_jax.draft.base import (DraftConfig, DraftState, PrefillContext,
                                   committed_slots, fuse, layer_forward, log_probs,
                                   prompt_positions, shifted_embeds)


@dataclasses.dataclass(frozen=True)
class EagleDrafter:
  """Text-only EAGLE drafter: image tokens are ordinary positions with their vision embeddings.

  Subclasses change how the prompt becomes draft inputs (`prompt_inputs`) and how a feature is
  transformed before fc (`features_in`); the cache, tree steps and commits are shared.
  """
  cfg: DraftConfig

  def features_in(self, params, state, features):
    """Hook for drafters that transform the feature before fc (ViSpec injects the image)."""
    del params, state
    return features

  def prompt_inputs(self, params, features, next_embeds, attention_mask, image_slots):
    """Draft inputs for the prompt slots: (x [B, P, E], keys bool[B, P] (slots that enter the
    draft sequence), extra state)."""
    del image_slots
    return fuse(params, next_embeds, features), attention_mask, None

  def prompt_forward(self, params, features, next_embeds, attention_mask, image_slots,
                     cache=None):
    """The draft over a prompt (also the training forward, with `cache=None`).

    Args:
      features: f_i, target last-layer features [B, P, E].
      next_embeds: e_{i+1}, the input embedding of the NEXT token [B, P, E].
      attention_mask: bool[B, P] real (not padding) slots.
      image_slots: bool[B, P], slot i is an image position iff token i+1 is a vision token.
      cache: optional (k, v) [B, K, S, D] written at slots [0, P).
    Returns:
      (hidden [B, P, E], keys bool[B, P], positions int32[B, P], extra, cache).
    """
    p = features.shape[1]
    x, keys, extra = self.prompt_inputs(params, features, next_embeds, attention_mask,
                                        image_slots)
    positions = prompt_positions(attention_mask)
    slots = p if cache is None else cache[0].shape[2]
    causal = jnp.arange(slots)[None, :] <= jnp.arange(p)[:, None]
    mask = causal[None] & jnp.pad(keys, ((0, 0), (0, slots - p)))[:, None, :]
    h, cache = layer_forward(params, self.cfg, x, positions, mask, cache,
                             None if cache is None else 0)
    return h, keys, positions, extra, cache

  def root_hidden(self, state: DraftState) -> jax.Array:
    return state.last_hidden

  def start(self, params, head, ctx: PrefillContext):
    b, p, e = ctx.embeds.shape
    cfg = self.cfg
    image_slots = jnp.pad(ctx.vision_mask[:, 1:], ((0, 0), (0, 1))) & ctx.attention_mask
    cache = (sharding.constrain(jnp.zeros((b, cfg.num_kv_heads, ctx.cache_len, cfg.head_dim),
                                          ctx.embeds.dtype), sharding.CACHE_AXES),) * 2
    h, keys, positions, extra, cache = self.prompt_forward(
        params, ctx.features, shifted_embeds(head, ctx), ctx.attention_mask, image_slots, cache)
    state = DraftState(cache=[cache], prompt_valid=keys, length=jnp.full((b,), p, jnp.int32),
                       position=positions[:, -1] + 1, last_hidden=h[:, -1], extra=extra)
    return state, log_probs(head, h[:, -1])

  def step(self, params, head, state: DraftState, level, offset, tokens, parent_hidden,
           scratch_mask):
    """Feeds one tree level (see tree.py); its nodes are written at scratch slots offset..."""
    b, n = tokens.shape
    slots = state.cache[0][0].shape[2]
    width = scratch_mask.shape[-1]
    x = fuse(params, decoder.embed_tokens(head, tokens, parent_hidden.dtype),
             self.features_in(params, state, parent_hidden))
    rel = jnp.arange(slots)[None, :] - state.length[:, None]  # slot relative to scratch start
    in_scratch = (rel >= 0) & (rel < width)
    tree_vis = jnp.take_along_axis(
        scratch_mask, jnp.broadcast_to(jnp.clip(rel, 0, width - 1)[:, None, :], (b, n, slots)), axis=2)
    mask = committed_slots(state, slots)[:, None, :] | (tree_vis & in_scratch[:, None, :])
    positions = jnp.broadcast_to((state.position + level)[:, None], (b, n))
    h, cache = layer_forward(params, self.cfg, x, positions, mask, state.cache[0],
                             state.length + offset)
    return log_probs(head, h), h, dataclasses.replace(state, cache=[cache])

  def commit(self, params, head, state: DraftState, features, next_tokens, n_valid):
    """Appends the round's committed positions: features [B, n, E] of root + accepted tokens,
    next_tokens [B, n] (the token after each), of which the first n_valid[B] are real."""
    b, n = next_tokens.shape
    slots = state.cache[0][0].shape[2]
    x = fuse(params, decoder.embed_tokens(head, next_tokens, features.dtype),
             self.features_in(params, state, features))
    new = jnp.arange(slots)[None, :] - state.length[:, None]  # [B, S]
    causal = new[:, None, :] <= jnp.arange(n)[None, :, None]
    mask = committed_slots(state, slots)[:, None, :] | ((new[:, None, :] >= 0) & causal)
    positions = state.position[:, None] + jnp.arange(n, dtype=jnp.int32)[None, :]
    h, cache = layer_forward(params, self.cfg, x, positions, mask, state.cache[0], state.length)
    last = jnp.take_along_axis(h, jnp.maximum(n_valid - 1, 0)[:, None, None], axis=1)[:, 0]
    last = jnp.where((n_valid > 0)[:, None], last, state.last_hidden)
    state = dataclasses.replace(state, cache=[cache], length=state.length + n_valid,
                                position=state.position + n_valid, last_hidden=last)
    return state, log_probs(head, last)
