"""Draft models: the EAGLE-style feature drafter (one decoder layer over fc([embedding; feature]))
and what every drafter shares (config, parameter declaration, the protocol).

The drafter reuses the target's token embedding and lm_head (frozen, passed in as `head`, never
copied into the draft's params). Draft position i sees (f_i, e_{i+1}): the target's last-layer
feature at i and the input embedding of token i+1, and predicts the next feature (EAGLE
convention, vispec-reference.md section 2.5). Draft RoPE is 1-D even for Qwen targets, computed
from the positions on the fly (no table, so no length limit).

Drafters (`make_drafter(cfg)` picks one by `cfg.kind`):
  EagleDrafter   "eagle"   text-only EAGLE baseline: image tokens are ordinary positions.
  ViSpecDrafter  "vispec"  vision adaptor + global image feature (`vispec_draft.py`).
  MedusaDrafter  "medusa"  Medusa heads baseline, no cache (`medusa.py`).

A drafter object is static (hashable: it holds only its config) and implements the protocol the
speculative loop (`speculative.py`) and tree builder (`tree.py`) use:
  start(params, head, ctx)                       -> (state, root_logp [B, V])
  root_hidden(state)                             -> [B, E] hidden after the tree's root
  step(params, head, state, level, offset, tokens, parent_hidden, scratch_mask)
                                                 -> (logp [B, n, V], hidden [B, n, E], state)
  commit(params, head, state, features, next_tokens, n_valid) -> (state, root_logp [B, V])
`level` and `offset` are Python ints (static).

Draft cache: S slots per row. Slots [0, P) hold the prompt (prompt_valid says which count),
committed tokens follow from slot P up to `length`; a round's tree nodes are written as scratch
right after `length` and forgotten (overwritten by the next commit).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from vispec_jax import layers, sharding
from vispec_jax.configs import TextConfig
from vispec_jax.models import decoder

Params = layers.Params

KINDS = ("eagle", "vispec", "medusa")


@dataclasses.dataclass(frozen=True)
class DraftConfig:
  """A draft model. kind: "eagle" (text-only baseline), "vispec" (adaptor + global image
  feature) or "medusa" (`medusa_heads` ResBlock heads on the target feature; the attention
  fields are then unused)."""
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
  medusa_heads: int = 5

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"unknown draft kind {self.kind!r}; known: {KINDS}")
    if self.kind == "vispec" and self.num_q < 1:
      raise ValueError(f"num_q must be >= 1, got {self.num_q}")
    if self.kind == "medusa" and self.medusa_heads < 1:
      raise ValueError(f"medusa_heads must be >= 1, got {self.medusa_heads}")

  @staticmethod
  def for_target(text: TextConfig, kind: str = "eagle", **overrides) -> "DraftConfig":
    """The draft shapes ViSpec uses for a target: MHA with the target's head count."""
    base = dict(kind=kind, hidden_size=text.hidden_size, intermediate_size=text.intermediate_size,
                num_heads=text.num_heads, num_kv_heads=text.num_heads, head_dim=text.head_dim,
                vocab_size=text.vocab_size, rms_norm_eps=text.rms_norm_eps,
                rope_theta=text.rope_theta, qkv_bias=text.qkv_bias)
    return DraftConfig(**{**base, **overrides})


def param_shapes(cfg: DraftConfig, dtype=jnp.float32) -> Params:
  """Every draft parameter (ShapeDtypeStruct leaves), declared once for init, loading, saving.

  eagle:  fc, layer (no input norm: attn, post_norm, mlp)
  vispec: eagle + adaptor {q [num_q, N, D], k, v, o} + img_fc (2E -> E)
  medusa: heads, a list of medusa_heads linears E -> E with bias (x + silu(W x + b))
  """
  lin = decoder._linear_shapes  # pylint: disable=protected-access
  e, f = cfg.hidden_size, cfg.intermediate_size
  if cfg.kind == "medusa":
    return {"heads": [lin(e, e, True, dtype) for _ in range(cfg.medusa_heads)]}
  nd, kd = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
  p = {
      "fc": lin(2 * e, e, cfg.fc_bias, dtype),
      "layer": {
          "attn": {"q": lin(e, nd, cfg.qkv_bias, dtype), "k": lin(e, kd, cfg.qkv_bias, dtype),
                   "v": lin(e, kd, cfg.qkv_bias, dtype), "o": lin(nd, e, False, dtype)},
          "post_norm": {"scale": jax.ShapeDtypeStruct((e,), dtype)},
          "mlp": {"gate": lin(e, f, False, dtype), "up": lin(e, f, False, dtype),
                  "down": lin(f, e, False, dtype)},
      },
  }
  if cfg.kind == "vispec":
    p["adaptor"] = {"q": jax.ShapeDtypeStruct((cfg.num_q, cfg.num_heads, cfg.head_dim), dtype),
                    "k": lin(e, nd, cfg.qkv_bias, dtype), "v": lin(e, nd, cfg.qkv_bias, dtype),
                    "o": lin(nd, e, False, dtype)}
    p["img_fc"] = lin(2 * e, e, cfg.fc_bias, dtype)
  return p


def init_params(cfg: DraftConfig, key: jax.Array, dtype=jnp.float32) -> Params:
  """Fresh draft params as the reference initialises them where it matters: linears N(0, 0.02);
  ViSpec adaptor queries N(0, head_dim^-0.5), img_fc = [I | 0] with zero bias (identity on the
  feature, so a fresh ViSpec draft without images is its EAGLE draft); Medusa heads zero (each
  head is the identity, as in the reference's ResBlock init)."""
  key, sub = jax.random.split(key)
  params = layers.init_params(param_shapes(cfg, dtype), key)
  e = cfg.hidden_size
  if cfg.kind == "vispec":
    q = params["adaptor"]["q"]
    params["adaptor"]["q"] = (cfg.head_dim ** -0.5 * jax.random.normal(sub, q.shape)).astype(dtype)
    params["img_fc"]["kernel"] = jnp.concatenate(
        [jnp.eye(e, dtype=dtype), jnp.zeros((e, e), dtype)], axis=0)  # [2E, E]: f passes, g not
    if "bias" in params["img_fc"]:
      params["img_fc"]["bias"] = jnp.zeros((e,), dtype)
  if cfg.kind == "medusa":
    params["heads"] = jax.tree.map(jnp.zeros_like, params["heads"])
  return params


def head_params(target_text_params: Params) -> Params:
  """The frozen pieces of the target a drafter uses: embedding and lm_head (no copies)."""
  return {k: target_text_params[k] for k in ("embed", "lm_head") if k in target_text_params}


def layer_forward(params: Params, cfg: DraftConfig, x, positions, mask, cache=None,
                  write_index=None):
  """The single decoder layer: no input norm, attention, post-attention norm, MLP, no final
  norm. x: [B, T, E] (output of fc); positions int[B, T]; mask bool[B, T, S] (S = T without a
  cache)."""
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
  cache: Any              # [(k, v)] one layer, each [B, K, S, D]
  prompt_valid: jax.Array  # bool[B, P]: prompt slots that count as keys
  length: jax.Array       # int32[B]: next committed slot
  position: jax.Array     # int32[B]: 1-D position id of the next committed slot
  last_hidden: jax.Array  # [B, E]: draft output at the last committed slot (the tree's root)
  extra: Any = None       # drafter-specific (ViSpec: the global image feature [B, E])


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["features", "embeds", "attention_mask", "vision_mask", "root"],
                   meta_fields=["cache_len"])
@dataclasses.dataclass(frozen=True)
class PrefillContext:
  """What the target's prefill hands the drafter. All [B, P, ...] left-padded like the prompt.
  A pytree (cache_len static), so `jax.jit(drafter.start)(params, head, ctx)` works."""
  features: jax.Array        # target last-layer hidden (after final norm)
  embeds: jax.Array          # target input embeddings (vision features at vision tokens)
  attention_mask: jax.Array  # bool[B, P]
  vision_mask: jax.Array     # bool[B, P]: positions holding vision tokens
  root: jax.Array            # int32[B]: first generated token
  cache_len: int             # draft cache slots to allocate


def shifted_embeds(head: Params, ctx: PrefillContext) -> jax.Array:
  """e_{i+1} for every prompt slot i: the next slot's input embedding, embed(root) last."""
  root_embed = decoder.embed_tokens(head, ctx.root[:, None], ctx.embeds.dtype)
  return jnp.concatenate([ctx.embeds[:, 1:], root_embed], axis=1)


def prompt_positions(attention_mask: jax.Array) -> jax.Array:
  """1-D draft positions of left-padded prompt slots: index in the unpadded prompt."""
  return jnp.cumsum(attention_mask, axis=1).astype(jnp.int32) - 1


def _committed(state: DraftState, slots: int) -> jax.Array:
  """bool[B, S]: which cache slots hold committed keys."""
  p = state.prompt_valid.shape[1]
  slot = jnp.arange(slots)[None, :]
  prompt = jnp.pad(state.prompt_valid, ((0, 0), (0, slots - p)))
  return prompt | ((slot >= p) & (slot < state.length[:, None]))


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
    mask = _committed(state, slots)[:, None, :] | (tree_vis & in_scratch[:, None, :])
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
    mask = _committed(state, slots)[:, None, :] | ((new[:, None, :] >= 0) & causal)
    positions = state.position[:, None] + jnp.arange(n, dtype=jnp.int32)[None, :]
    h, cache = layer_forward(params, self.cfg, x, positions, mask, state.cache[0], state.length)
    last = jnp.take_along_axis(h, jnp.maximum(n_valid - 1, 0)[:, None, None], axis=1)[:, 0]
    last = jnp.where((n_valid > 0)[:, None], last, state.last_hidden)
    state = dataclasses.replace(state, cache=[cache], length=state.length + n_valid,
                                position=state.position + n_valid, last_hidden=last)
    return state, log_probs(head, last)


def make_drafter(cfg: DraftConfig):
  """The drafter object for `cfg.kind` (static, hashable: pass it to speculative_generate)."""
  if cfg.kind == "eagle":
    return EagleDrafter(cfg)
  if cfg.kind == "vispec":
    from vispec_jax.vispec_draft import ViSpecDrafter  # local: it subclasses EagleDrafter
    return ViSpecDrafter(cfg)
  from vispec_jax.medusa import MedusaDrafter
  return MedusaDrafter(cfg)


DRAFTER_METHODS = ("start", "root_hidden", "step", "commit")


def _is_drafter(x) -> bool:
  return all(callable(getattr(x, m, None)) for m in DRAFTER_METHODS)


def check_drafter(drafter, params=None, text: TextConfig | None = None) -> None:
  """Clear errors for the drafter and draft-params arguments of the speculative entry points:
  the wrong kind of object (draft params, a `Draft`, a `DraftConfig` where the drafter goes),
  params that do not fit the drafter, a drafter made for another target (`text`)."""
  if not _is_drafter(drafter):
    kind = type(drafter).__name__
    if isinstance(drafter, DraftConfig):
      hint = "a DraftConfig: pass vj.make_drafter(cfg)"
    elif hasattr(drafter, "drafter") and hasattr(drafter, "params"):
      hint = "a Draft: pass draft.drafter, then draft.params"
    elif isinstance(drafter, (dict, list, tuple)):
      hint = f"a {kind} (draft params?): the drafter (draft.drafter) goes first, its params second"
    else:
      hint = f"a {kind}"
    raise TypeError(f"drafter must be a drafter object with {', '.join(DRAFTER_METHODS)} "
                    f"(draft.drafter or vj.make_drafter(cfg)), got {hint}")
  try:
    hash(drafter)
  except TypeError:
    raise TypeError(f"drafter {type(drafter).__name__} must be hashable (it is a static jit "
                    "argument): make it a frozen dataclass") from None
  cfg = getattr(drafter, "cfg", None)
  if isinstance(cfg, DraftConfig) and text is not None:
    for field, want in (("vocab_size", text.vocab_size), ("hidden_size", text.hidden_size)):
      if getattr(cfg, field) != want:
        raise ValueError(f"the drafter's {field} {getattr(cfg, field)} does not match the "
                         f"target's {want}: this draft was made for another target")
  if params is None:
    return
  if _is_drafter(params):
    raise TypeError(f"draft params must be a params pytree, got a drafter "
                    f"({type(params).__name__}): the arguments are (target, drafter, draft_params, "
                    f"batch)")
  if hasattr(params, "drafter") and hasattr(params, "params"):
    raise TypeError("draft params must be a params pytree, got a Draft: pass draft.params")
  if isinstance(cfg, DraftConfig):
    want = jax.tree_util.tree_structure(param_shapes(cfg))
    got = jax.tree_util.tree_structure(params)
    if want != got:
      raise ValueError(f"draft params do not fit the {cfg.kind} drafter: expected the tree "
                       f"{_top_keys(param_shapes(cfg))}, got {_top_keys(params)}")
    for (path, w), g in zip(jax.tree_util.tree_leaves_with_path(param_shapes(cfg)),
                            jax.tree.leaves(params)):
      if tuple(getattr(g, "shape", ())) != tuple(w.shape):
        raise ValueError(f"draft param {jax.tree_util.keystr(path)} has shape "
                         f"{tuple(getattr(g, 'shape', ()))}, the drafter expects {tuple(w.shape)}")


def _top_keys(tree) -> str:
  return repr(sorted(tree)) if isinstance(tree, dict) else type(tree).__name__
