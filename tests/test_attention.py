"""layers.dot_attention: the blocked (live-length) path equals one softmax over every slot."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vispec_jax import layers


def _inputs(b, t, n, kh, s, d, seed, live):
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.standard_normal((b, t, n, d)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((b, kh, s, d)), jnp.float32)
  v = jnp.asarray(rng.standard_normal((b, kh, s, d)), jnp.float32)
  mask = rng.random((b, t, s)) < 0.6
  mask[:, :, live:] = False       # nothing visible past the live length
  mask[0, 0, :] = False           # a fully masked query (e.g. padding) must not give NaN
  mask[-1, :, :3] = False         # left padding
  return q, k, v, jnp.asarray(mask)


@pytest.mark.parametrize("s,block,live", [(40, 16, 40), (40, 16, 17), (41, 16, 41), (64, 16, 5),
                                          (64, 256, 64), (33, 7, 30)])
@pytest.mark.parametrize("t,n,kh", [(1, 4, 2), (5, 4, 1), (3, 2, 2)])
def test_blocked_equals_one_softmax(s, block, live, t, n, kh):
  q, k, v, mask = _inputs(3, t, n, kh, s, 8, seed=s + t, live=live)
  want = layers.dot_attention(q, k, v, mask, block=None)
  got = jax.jit(lambda *a: layers.dot_attention(*a, block=block))(q, k, v, mask)
  assert not np.isnan(np.asarray(got)).any()
  visible = np.asarray(mask).any(-1)  # [B, T]: rows with at least one key
  np.testing.assert_allclose(np.asarray(got)[visible], np.asarray(want)[visible], atol=1e-5)


def test_live_slots_bounds_the_blocks():
  mask = jnp.zeros((2, 3, 100), bool).at[1, 2, 41].set(True)
  assert int(layers.live_slots(mask)) == 42
  assert int(layers.live_slots(jnp.zeros((2, 1, 10), bool))) == 0


def test_trailing_blocks_add_nothing():
  """A row's output does not depend on how far other rows reach (batch invariance)."""
  q, k, v, mask = _inputs(2, 1, 4, 2, 64, 8, seed=0, live=10)
  alone = layers.dot_attention(q[1:], k[1:], v[1:], mask[1:], block=8)
  reach = mask.at[0, 0, 63].set(True)  # row 0 now needs all 8 blocks
  together = layers.dot_attention(q, k, v, reach, block=8)
  np.testing.assert_array_equal(np.asarray(alone[0]), np.asarray(together[1]))
