"""The draft losses of vispec-reference.md section 6.3, one pure function each (docs/training.md).

Per draft position: h the draft's output feature [..., E], f the target's next feature [..., E],
z = lm_head(h) draft logits [..., V], p = softmax(lm_head(f)) target probs [..., V] (fp32, no
gradient). Each term returns [...]; `masked_mean` pools it over the supervised positions
(token-weighted; the reference trains with batch size 1).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

# Term name -> weight. The stage-1 ListMLE weight is 0.1 inside the 0.1-weighted "ploss".
STAGE1_WEIGHTS = {"feature_smooth_l1": 1.0, "soft_ce": 0.1, "listmle": 0.01}
STAGE2_WEIGHTS = {"prob_l1": 10.0, "listmle": 0.1}


def feature_smooth_l1(h: jax.Array, f: jax.Array, beta: float = 1.0) -> jax.Array:
  """Feature regression ("vloss", stage 1): SmoothL1(h, f), mean over the hidden dimension."""
  d = jnp.abs(h.astype(jnp.float32) - f.astype(jnp.float32))
  per = jnp.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta)
  return jnp.mean(per, axis=-1)


def soft_cross_entropy(z: jax.Array, p: jax.Array) -> jax.Array:
  """Soft cross-entropy ("ploss", stage 1): -sum_v p_v log softmax(z)_v."""
  return -jnp.sum(p * jax.nn.log_softmax(z.astype(jnp.float32), axis=-1), axis=-1)


def prob_l1(z: jax.Array, p: jax.Array) -> jax.Array:
  """Probability L1 (stage 2): sum_v |softmax(z)_v - p_v| (twice the total variation)."""
  return jnp.sum(jnp.abs(jax.nn.softmax(z.astype(jnp.float32), axis=-1) - p), axis=-1)


def listmle(z: jax.Array, p: jax.Array, top: int = 10) -> jax.Array:
  """ListMLE on the target's top-k tokens t_1..t_k (by p), z_j the draft logit of t_j:
  -sum_j (z_j - logsumexp(z_j, ..., z_k)), the Plackett-Luce likelihood of the target's ranking."""
  _, idx = jax.lax.top_k(p, top)                            # [..., k], descending p
  zk = jnp.take_along_axis(z.astype(jnp.float32), idx, -1)  # [..., k]
  later = jnp.arange(top)[None, :] >= jnp.arange(top)[:, None]          # [j, m]: m >= j
  suffix = jax.nn.logsumexp(jnp.where(later, zk[..., None, :], -jnp.inf), axis=-1)
  return -jnp.sum(zk - suffix, axis=-1)


def masked_mean(term: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of a per-position term over the masked positions (0 when nothing is masked)."""
  m = mask.astype(jnp.float32)
  return jnp.sum(term * m) / jnp.maximum(jnp.sum(m), 1.0)


def target_probs(f_logits: jax.Array) -> jax.Array:
  """p = softmax(lm_head(f_{i+1})) in fp32, with no gradient (the target is frozen)."""
  return jax.lax.stop_gradient(jax.nn.softmax(f_logits.astype(jnp.float32), axis=-1))


def terms(h: jax.Array, f: jax.Array, z: jax.Array, p: jax.Array, mask: jax.Array,
          weights: Mapping[str, float]) -> dict[str, jax.Array]:
  """Every term with a nonzero weight, each pooled over the masked positions (unweighted)."""
  fns = {"feature_smooth_l1": lambda: feature_smooth_l1(h, f),
         "soft_ce": lambda: soft_cross_entropy(z, p),
         "prob_l1": lambda: prob_l1(z, p),
         "listmle": lambda: listmle(z, p)}
  unknown = set(weights) - set(fns)
  if unknown:
    raise ValueError(f"unknown loss terms {sorted(unknown)}; known: {sorted(fns)}")
  return {name: masked_mean(fns[name](), mask) for name, w in weights.items() if w}


def total_loss(values: Mapping[str, jax.Array], weights: Mapping[str, float]) -> jax.Array:
  """sum_term weight * value."""
  return sum(weights[k] * v for k, v in values.items())
