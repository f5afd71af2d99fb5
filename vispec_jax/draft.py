"""Draft models: the EAGLE-style feature drafter (one decoder layer over fc([embedding; feature])).

The drafter reuses the target's token embedding and lm_head (frozen, passed in as `head`, never
copied into the draft's params). Draft position i sees (f_i, e_{i+1}): the target's last-layer
feature at i and the input embedding of token i+1, and predicts the next feature (EAGLE
convention, vispec-reference.md section 2.5). Draft RoPE is 1-D even for Qwen targets.

A drafter object is static (hashable: it holds only its config) and implements the protocol the
speculative loop (`speculative.py`) and tree builder (`tree.py`) use:
  start(params, head, ctx)                       -> (state, root_logp [B, V])
  root_hidden(state)                             -> [B, E] hidden after the tree's root
  step(params, head, state, level, offset, tokens, parent_hidden, scratch_mask)
                                                 -> (logp [B, n, V], hidden [B, n, E], state)
  commit(params, head, state, features, next_tokens, n_valid) -> (state, root_logp [B, V])

Draft cache: S slots per row. Slots [0, P) hold the prompt (prompt_valid says which count),
committed tokens follow from slot P up to `length`; a round's tree nodes are written as scratch
right after `length` and forgotten (overwritten by the next commit).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from vispec_jax import layers
from vispec_jax.configs import TextConfig
from vispec_jax.models import decoder

Params = layers.Params


@dataclasses.dataclass(frozen=True)
class DraftConfig:
  """A one-layer feature drafter. kind: "eagle" (text-only baseline) or "vispec"."""
  kind: str
  hidden_size: int
  intermediate_size: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  vocab_size: int
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  qkv_bias: bool = False
  fc_bias: bool = True
  hidden_act: str = "silu"
  num_q: int = 2  # ViSpec adaptor queries: num_q - 1 compressed tokens + 1 global feature

  @staticmethod
  def for_target(text: TextConfig, kind: str = "eagle", **overrides) -> "DraftConfig":
    """The draft shapes ViSpec uses for a target: MHA with the target's head count."""
    base = dict(kind=kind, hidden_size=text.hidden_size, intermediate_size=text.intermediate_size,
                num_heads=text.num_heads, num_kv_heads=text.num_heads, head_dim=text.head_dim,
                vocab_size=text.vocab_size, rms_norm_eps=text.rms_norm_eps,
                rope_theta=text.rope_theta, qkv_bias=text.qkv_bias)
    return DraftConfig(**{**base, **overrides})


def param_shapes(cfg: DraftConfig, dtype=jnp.float32) -> Params:
  lin = decoder._linear_shapes  # pylint: disable=protected-access
  e, f = cfg.hidden_size, cfg.intermediate_size
  nd, kd = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
  return {
      "fc": lin(2 * e, e, cfg.fc_bias, dtype),
      "layer": {
          "attn": {"q": lin(e, nd, cfg.qkv_bias, dtype), "k": lin(e, kd, cfg.qkv_bias, dtype),
                   "v": lin(e, kd, cfg.qkv_bias, dtype), "o": lin(nd, e, False, dtype)},
          "post_norm": {"scale": jax.ShapeDtypeStruct((e,), dtype)},
          "mlp": {"gate": lin(e, f, False, dtype), "up": lin(e, f, False, dtype),
                  "down": lin(f, e, False, dtype)},
      },
  }


def init_params(cfg: DraftConfig, key: jax.Array, dtype=jnp.float32) -> Params:
  return layers.init_params(param_shapes(cfg, dtype), key)


def head_params(target_text_params: Params) -> Params:
  """The frozen pieces of the target a drafter uses: embedding and lm_head (no copies)."""
  return {k: target_text_params[k] for k in ("embed", "lm_head") if k in target_text_params}


def layer_forward(params: Params, cfg: DraftConfig, x, positions, mask, cache, write_index):
  """The single decoder layer: no input norm, attention, post-attention norm, MLP, no final
  norm. x: [B, T, E] (output of fc); positions int[B, T]."""
  cos, sin = layers.rope_angles(positions, cfg.head_dim, cfg.rope_theta)
  p = params["layer"]
  a, cache = layers.self_attention(x, p["attn"], num_heads=cfg.num_heads,
                                   num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
                                   cos=cos, sin=sin, mask=mask, cache=cache,
                                   write_index=write_index)
  x = x + a
  x = x + layers.gated_mlp(layers.rms_norm(x, p["post_norm"], cfg.rms_norm_eps), p["mlp"],
                           cfg.hidden_act)
  return x, cache


def fuse(params: Params, token_embeds, features):
  """fc([token embedding; feature]) -- embedding first, as in the checkpoints."""
  return layers.linear(jnp.concatenate([token_embeds, features.astype(token_embeds.dtype)], -1),
                       params["fc"])


def log_probs(head: Params, hidden) -> jax.Array:
  return jax.nn.log_softmax(decoder.logits(head, hidden), axis=-1)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DraftState:
  cache: Any              # [(k, v)] one layer, each [B, S, K, D]
  prompt_valid: jax.Array  # bool[B, P]: prompt slots that count as keys
  length: jax.Array       # int32[B]: next committed slot
  position: jax.Array     # int32[B]: 1-D position id of the next committed slot
  last_hidden: jax.Array  # [B, E]: draft output at the last committed slot (the tree's root)
  extra: Any = None       # drafter-specific (ViSpec: the global image feature)


@dataclasses.dataclass(frozen=True)
class PrefillContext:
  """What the target's prefill hands the drafter. All [B, P, ...] left-padded like the prompt."""
  features: jax.Array        # target last-layer hidden (after final norm)
  embeds: jax.Array          # target input embeddings (vision features at vision tokens)
  attention_mask: jax.Array  # bool[B, P]
  vision_mask: jax.Array     # bool[B, P]: positions holding vision tokens
  root: jax.Array            # int32[B]: first generated token
  cache_len: int             # draft cache slots to allocate


def _committed(state: DraftState, slots: int) -> jax.Array:
  """bool[B, S]: which cache slots hold committed keys."""
  p = state.prompt_valid.shape[1]
  slot = jnp.arange(slots)[None, :]
  prompt = jnp.pad(state.prompt_valid, ((0, 0), (0, slots - p)))
  return prompt | ((slot >= p) & (slot < state.length[:, None]))


@dataclasses.dataclass(frozen=True)
class EagleDrafter:
  """Text-only EAGLE drafter: image tokens are ordinary positions with their vision embeddings."""
  cfg: DraftConfig

  def features_in(self, params, state, features):
    """Hook for drafters that transform the feature before fc (ViSpec injects the image)."""
    del params, state
    return features

  def root_hidden(self, state: DraftState) -> jax.Array:
    return state.last_hidden

  def start(self, params, head, ctx: PrefillContext):
    b, p, e = ctx.embeds.shape
    cfg = self.cfg
    root_embed = decoder.embed_tokens(head, ctx.root[:, None], ctx.embeds.dtype)
    next_embeds = jnp.concatenate([ctx.embeds[:, 1:], root_embed], axis=1)  # e_{i+1}
    positions = jnp.cumsum(ctx.attention_mask, axis=1).astype(jnp.int32) - 1
    state = DraftState(
        cache=[(jnp.zeros((b, ctx.cache_len, cfg.num_kv_heads, cfg.head_dim), ctx.embeds.dtype),) * 2],
        prompt_valid=ctx.attention_mask, length=jnp.full((b,), p, jnp.int32),
        position=positions[:, -1] + 1, last_hidden=jnp.zeros((b, e), ctx.embeds.dtype))
    causal = jnp.arange(ctx.cache_len)[None, :] <= jnp.arange(p)[:, None]
    mask = causal[None] & _committed(state, ctx.cache_len)[:, None, :]
    x = fuse(params, next_embeds, self.features_in(params, state, ctx.features))
    h, cache = layer_forward(params, cfg, x, positions, mask, state.cache[0], 0)
    state = dataclasses.replace(state, cache=[cache], last_hidden=h[:, -1])
    return state, log_probs(head, h[:, -1])

  def step(self, params, head, state: DraftState, level, offset, tokens, parent_hidden,
           scratch_mask):
    """Feeds one tree level (see tree.py); its nodes are written at scratch slots offset..."""
    b, n = tokens.shape
    slots = state.cache[0][0].shape[1]
    width = scratch_mask.shape[-1]
    x = fuse(params, decoder.embed_tokens(head, tokens, parent_hidden.dtype),
             self.features_in(params, state, parent_hidden))
    rel = jnp.arange(slots)[None, :] - state.length[:, None]  # slot relative to scratch start
    in_scratch = (rel >= 0) & (rel < width)
    tree_vis = jnp.take_along_axis(
        scratch_mask, jnp.broadcast_to(jnp.clip(rel, 0, width - 1)[:, None, :], (b, n, slots)), axis=2)
    mask = _committed(state, slots)[:, None, :] | (tree_vis & in_scratch[:, None, :])
    positions = jnp.broadcast_to((state.position + level)[:, None], (b, n))
    h, cache = layer_forward(params, self.cfg, x, positions, mask, state.cache[0],
                             state.length + offset)
    return log_probs(head, h), h, dataclasses.replace(state, cache=[cache])

  def commit(self, params, head, state: DraftState, features, next_tokens, n_valid):
    """Appends the round's committed positions: features [B, n, E] of root + accepted tokens,
    next_tokens [B, n] (the token after each), of which the first n_valid[B] are real."""
    b, n = next_tokens.shape
    slots = state.cache[0][0].shape[1]
    x = fuse(params, decoder.embed_tokens(head, next_tokens, features.dtype),
             self.features_in(params, state, features))
    new = jnp.arange(slots)[None, :] - state.length[:, None]  # [B, S]
    causal = new[:, None, :] <= jnp.arange(n)[None, :, None]
    mask = _committed(state, slots)[:, None, :] | ((new[:, None, :] >= 0) & causal)
    positions = state.position[:, None] + jnp.arange(n, dtype=jnp.int32)[None, :]
    h, cache = layer_forward(params, self.cfg, x, positions, mask, state.cache[0], state.length)
    last = jnp.take_along_axis(h, jnp.maximum(n_valid - 1, 0)[:, None, None], axis=1)[:, 0]
    last = jnp.where((n_valid > 0)[:, None], last, state.last_hidden)
    state = dataclasses.replace(state, cache=[cache], length=state.length + n_valid,
                                position=state.position + n_valid, last_hidden=last)
    return state, log_probs(head, last)
