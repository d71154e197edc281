"""altgrad_jax: bit-exact low-precision formats and manifold-aware optimizers in JAX."""
