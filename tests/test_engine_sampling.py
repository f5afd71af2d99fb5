"""sampling.argmax (two plain reductions) returns exactly jnp.argmax's indices."""

import jax
import jax.numpy as jnp
import numpy as np

from vispec_jax.engine import sampling


def test_argmax_matches_jnp_argmax_on_ties_infinities_and_nan():
  x = jax.random.normal(jax.random.PRNGKey(1), (6, 7, 779))
  x = x.at[0, 0, 3].set(x[0, 0].max())          # a tie: the first index wins
  x = x.at[1, 1].set(-jnp.inf)                   # all -inf: index 0
  x = x.at[2, 2, 10].set(jnp.nan).at[2, 2, 20].set(jnp.nan)  # NaN counts as the max
  x = x.at[3, 3].set(0.0).at[4, 4, 778].set(jnp.inf)
  got = jax.jit(sampling.argmax)(x)
  assert got.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(got), np.asarray(jnp.argmax(x, axis=-1)))
