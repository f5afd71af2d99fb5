"""What every drafter shares: the config, the parameter declaration, the EAGLE decoder layer
and feature fusion, the draft state and the prefill context (the drafter protocol is in
`draft/__init__.py`; EAGLE, ViSpec and Medusa drafters in `eagle.py`, `vispec.py`, `medusa.py`).

The drafter reuses the target's token embedding and lm_head (frozen, passed in as `head`, never
copied into the draft's params). Draft position i sees (f_i, e_{i+1}): the target's last-layer
feature at i and the input embedding of token i+1, and predicts the next feature (EAGLE
convention, vispec-reference.md section 2.5). Draft RoPE is 1-D even for Qwen targets, computed
from the positions on the fly (no table, so no length limit).

Draft cache: a `KVCache` (engine/kv_cache.py) of one layer, S slots per row. Slots [0, P) hold
the prompt (prompt_valid says which count), committed tokens follow from slot P up to `length`;
a round's tree nodes are written as scratch right after `length` and forgotten (overwritten by
the next commit).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from vispec_jax import layers
from vispec_jax.configs import DecoderShape, TextConfig
from vispec_jax.engine.kv_cache import KVCache
from vispec_jax.models import decoder

Params = layers.Params

KINDS = ("eagle", "vispec", "medusa")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DraftConfig(DecoderShape):
  """A draft model (its decoder layer's sizes: `DecoderShape`). kind: "eagle" (text-only
  baseline), "vispec" (adaptor + global image feature) or "medusa" (`medusa_heads` ResBlock
  heads on the target feature; the attention fields are then unused)."""
  kind: str
  fc_bias: bool = True
  num_q: int = 2  # ViSpec adaptor queries: num_q - 1 compressed tokens + 1 global feature
  global_feature: bool = True  # ViSpec: inject g (False: the no-global-feature ablation, g = 0)
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
    base = {f.name: getattr(text, f.name) for f in dataclasses.fields(DecoderShape)}
    # MHA (num_kv_heads = the target's query heads); drafts keep silu whatever the target uses.
    base.update(kind=kind, num_kv_heads=text.num_heads, hidden_act="silu")
    return DraftConfig(**{**base, **overrides})


def param_shapes(cfg: DraftConfig, dtype=jnp.float32) -> Params:
  """Every draft parameter (ShapeDtypeStruct leaves), declared once for init, loading, saving.

  eagle:  fc, layer (no input norm: attn, post_norm, mlp)
  vispec: eagle + adaptor {q [num_q, N, D], k, v, o} + img_fc (2E -> E)
  medusa: heads, a list of medusa_heads linears E -> E with bias (x + silu(W x + b))
  """
  lin = layers.linear_shapes
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


def last_committed(x: jax.Array, n_valid: jax.Array, before: jax.Array) -> jax.Array:
  """x[b, n_valid[b] - 1] of a commit's x [B, n, E]; `before` [B, E] where nothing was committed."""
  last = jnp.take_along_axis(x, jnp.maximum(n_valid - 1, 0)[:, None, None], axis=1)[:, 0]
  return jnp.where((n_valid > 0)[:, None], last.astype(before.dtype), before)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DraftState:
  cache: KVCache          # one layer [(k, v)], each [B, K, S, D]; length int32[B]
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
