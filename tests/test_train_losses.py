"""Every training loss term against a plain NumPy computation written from
vispec-reference.md section 6.3, plus hand-computed values and the weights of both stages."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from train import losses


def np_softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def np_log_softmax(z):
  m = z.max(-1, keepdims=True)
  return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def np_smooth_l1(h, f):
  out = np.zeros(h.shape[:-1])
  for idx in np.ndindex(*h.shape[:-1]):
    vals = []
    for a, b in zip(h[idx], f[idx]):
      d = abs(a - b)
      vals.append(0.5 * d * d if d < 1.0 else d - 0.5)
    out[idx] = sum(vals) / len(vals)
  return out


def np_listmle(z, p, k=10):
  out = np.zeros(z.shape[:-1])
  for idx in np.ndindex(*z.shape[:-1]):
    order = sorted(range(p.shape[-1]), key=lambda v: -p[idx][v])[:k]
    zz = [z[idx][v] for v in order]
    total = 0.0
    for j in range(k):
      total += zz[j] - math.log(sum(math.exp(x) for x in zz[j:]))
    out[idx] = -total
  return out


@pytest.fixture
def rows():
  rng = np.random.default_rng(0)
  v, e = 23, 6
  z = rng.normal(size=(2, 3, v)) * 2
  p = np_softmax(rng.normal(size=(2, 3, v)) * 3)
  h = rng.normal(size=(2, 3, e)) * 1.5
  f = rng.normal(size=(2, 3, e)) * 1.5
  return z, p, h, f


def test_smooth_l1_matches_numpy(rows):
  _, _, h, f = rows
  got = losses.feature_smooth_l1(jnp.asarray(h, jnp.float32), jnp.asarray(f, jnp.float32))
  np.testing.assert_allclose(got, np_smooth_l1(h, f), rtol=1e-5, atol=1e-6)


def test_smooth_l1_by_hand():
  # |d| = 0.5 -> 0.125; |d| = 2 -> 1.5: mean 0.8125.
  got = losses.feature_smooth_l1(jnp.array([[0.5, 3.0]]), jnp.array([[0.0, 1.0]]))
  np.testing.assert_allclose(got, [0.8125], rtol=1e-6)


def test_soft_ce_matches_numpy(rows):
  z, p, _, _ = rows
  got = losses.soft_cross_entropy(jnp.asarray(z, jnp.float32), jnp.asarray(p, jnp.float32))
  np.testing.assert_allclose(got, -(p * np_log_softmax(z)).sum(-1), rtol=1e-5)


def test_soft_ce_by_hand():
  # Uniform draft over 4 tokens: CE = log 4 whatever p is.
  got = losses.soft_cross_entropy(jnp.zeros((1, 4)), jnp.array([[0.7, 0.1, 0.1, 0.1]]))
  np.testing.assert_allclose(got, [math.log(4)], rtol=1e-6)


def test_prob_l1_matches_numpy(rows):
  z, p, _, _ = rows
  got = losses.prob_l1(jnp.asarray(z, jnp.float32), jnp.asarray(p, jnp.float32))
  np.testing.assert_allclose(got, np.abs(np_softmax(z) - p).sum(-1), rtol=1e-5)


def test_prob_l1_by_hand():
  # softmax([0, 0]) = [0.5, 0.5] vs p = [1, 0]: 0.5 + 0.5 = 1 (twice the total variation 0.5).
  got = losses.prob_l1(jnp.zeros((1, 2)), jnp.array([[1.0, 0.0]]))
  np.testing.assert_allclose(got, [1.0], rtol=1e-6)


def test_listmle_matches_numpy(rows):
  z, p, _, _ = rows
  got = losses.listmle(jnp.asarray(z, jnp.float32), jnp.asarray(p, jnp.float32))
  np.testing.assert_allclose(got, np_listmle(z, p), rtol=1e-5)


def test_listmle_by_hand():
  # top=2, target order (token 1, token 0), draft logits z1 = 2, z0 = 0:
  # -[(2 - log(e^2 + e^0)) + (0 - log(e^0))] = log(1 + e^-2).
  got = losses.listmle(jnp.array([[0.0, 2.0, 5.0]]), jnp.array([[0.3, 0.6, 0.1]]), top=2)
  np.testing.assert_allclose(got, [math.log(1 + math.exp(-2))], rtol=1e-6)


def test_listmle_uses_only_top_logits():
  # Changing a logit outside the target's top-k changes nothing.
  p = jnp.asarray(np_softmax(np.arange(12.0)))
  z = jnp.asarray(np.random.default_rng(1).normal(size=12), jnp.float32)
  a = losses.listmle(z, p)
  b = losses.listmle(z.at[0].set(100.0), p)  # token 0 has the smallest p
  np.testing.assert_allclose(a, b, rtol=1e-6)


def test_masked_mean_and_total():
  term = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
  mask = jnp.array([[True, False, True], [False, False, True]])
  np.testing.assert_allclose(losses.masked_mean(term, mask), (1 + 3 + 6) / 3)
  np.testing.assert_allclose(losses.masked_mean(term, jnp.zeros_like(mask)), 0.0)
  assert float(losses.total_loss({"prob_l1": 2.0, "listmle": 3.0},
                                 losses.STAGE2_WEIGHTS)) == pytest.approx(10 * 2 + 0.1 * 3)


def test_reference_weights():
  # Stage 1: 1.0 * SmoothL1 + 0.1 * (softCE + 0.1 * ListMLE); stage 2: 10 * L1 + 0.1 * ListMLE.
  assert losses.STAGE1_WEIGHTS == {"feature_smooth_l1": 1.0, "soft_ce": 0.1, "listmle": 0.01}
  assert losses.STAGE2_WEIGHTS == {"prob_l1": 10.0, "listmle": 0.1}


def test_terms_pool_masked_positions(rows):
  z, p, h, f = rows
  mask = np.array([[1, 0, 1], [0, 1, 1]], bool)
  vals = losses.terms(jnp.asarray(h), jnp.asarray(f), jnp.asarray(z), jnp.asarray(p),
                      jnp.asarray(mask), {"feature_smooth_l1": 1.0, "soft_ce": 0.1,
                                          "prob_l1": 0.0, "listmle": 0.01})
  assert set(vals) == {"feature_smooth_l1", "soft_ce", "listmle"}  # zero weight: not computed
  np.testing.assert_allclose(vals["soft_ce"], (-(p * np_log_softmax(z)).sum(-1))[mask].mean(),
                             rtol=1e-5)
  with pytest.raises(ValueError, match="unknown loss terms"):
    losses.terms(h, f, z, p, mask, {"kl": 1.0})
