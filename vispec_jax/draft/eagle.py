"""The EAGLE drafter: one decoder layer over fc([embedding; feature]), text only (image tokens
are ordinary positions with their vision embeddings). ViSpec's drafter extends it (`vispec.py`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from vispec_jax import sharding
from vispec_jax.models import decoder
from vispec_jax.draft.base import (DraftConfig, DraftState, PrefillContext, fuse, last_committed,
                                   layer_forward, log_probs, prompt_positions, shifted_embeds)
from vispec_jax.engine.kv_cache import KVCache, causal, prompt_mask


@dataclasses.dataclass(frozen=True)
class EagleDrafter:
  """Subclasses change how the prompt becomes draft inputs (`prompt_inputs`) and how a feature is
  transformed before fc (`features_in`); the cache, tree steps and commits are shared."""
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
    mask = prompt_mask(keys, p if cache is None else cache[0].shape[2])
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
    state = DraftState(cache=KVCache([cache], keys, jnp.full((b,), p, jnp.int32)),
                       position=positions[:, -1] + 1, last_hidden=h[:, -1], extra=extra)
    return state, log_probs(head, h[:, -1])

  def step(self, params, head, state: DraftState, level, offset, tokens, parent_hidden,
           scratch_mask):
    """Feeds one tree level (see tree.py); its nodes are written at scratch slots offset..."""
    positions = jnp.broadcast_to((state.position + level)[:, None], tokens.shape)
    h, cache = self.extend(params, head, state, tokens, parent_hidden, positions, scratch_mask,
                           offset)
    return log_probs(head, h), h, dataclasses.replace(state, cache=cache)

  def commit(self, params, head, state: DraftState, features, next_tokens, n_valid):
    """Appends the round's committed positions: features [B, n, E] of root + accepted tokens,
    next_tokens [B, n] (the token after each), of which the first n_valid[B] are real."""
    n = next_tokens.shape[1]
    positions = state.position[:, None] + jnp.arange(n, dtype=jnp.int32)[None, :]
    h, cache = self.extend(params, head, state, next_tokens, features, positions, causal(n))
    last = last_committed(h, n_valid, state.last_hidden)
    state = dataclasses.replace(state, cache=cache.advance(n_valid),
                                position=state.position + n_valid, last_hidden=last)
    return state, log_probs(head, last)

  def extend(self, params, head, state: DraftState, tokens, features, positions, vis,
             offset: int = 0):
    """The layer over new tokens [B, n] with their features [B, n, E], written from cache slot
    length + offset; they see the committed keys and the new slots `vis` allows (see
    `KVCache.mask`). Returns (hidden [B, n, E], the cache)."""
    x = fuse(params, decoder.embed_tokens(head, tokens, features.dtype),
             self.features_in(params, state, features))
    cache = state.cache
    h, layer = layer_forward(params, self.cfg, x, positions, cache.mask(vis), cache.layers[0],
                             cache.length + offset)
    return h, cache.replace(layers=[layer])
