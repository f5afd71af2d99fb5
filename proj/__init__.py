"""Research projects built on the library (big_vision's proj/ convention): they import vispec_jax,
never the other way round."""
