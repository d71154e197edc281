"""Dropout with counter-based mask bits (`altgrad_jax.quant.random.hash_bits`).

`flax.linen.Dropout` draws its mask with threefry (``jax.random.bernoulli``). On XLA:CPU that
was the largest cost of the study's train step after the matmuls (2 layers, d=128, length 128,
batch 32, E4M3 ulp_sr, 2 cores: 617 ms/step with threefry dropout 0.1 against 388 ms without
dropout; with this module 479 ms). ``python bench/train_step.py --only ulp_sr`` times both side by
side (one run: 585 ms threefry, 489 ms hash). The mask needs one
uniform word per element, not cryptographic strength, so this module hashes the element index
with two words drawn from the ``dropout`` RNG stream, as stochastic rounding does:

.. math::
   m_i = [\\,\\mathrm{bits}_i < \\lfloor (1 - r)\\, 2^{32} \\rceil\\,],\\qquad
   y_i = \\frac{m_i\\, x_i}{1 - r}

Same interface and semantics as `flax.linen.Dropout` (``rate``, ``deterministic``,
``rng_collection``); ``rate=1`` returns zeros. The keep probability is quantized to a multiple
of 2^-32.

References:
  Srivastava et al., 2014, "Dropout: a simple way to prevent neural networks from overfitting".
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from altgrad_jax.quant.random import hash_bits


def keep_mask(key: jax.Array, rate: float, shape: tuple[int, ...]) -> jax.Array:
    """Boolean mask of ``shape``, each element True with probability ``1 - rate``.

    Example:
      >>> m = keep_mask(jax.random.key(0), 0.25, (1000,))
      >>> 0.7 < float(m.mean()) < 0.8
      True
    """
    threshold = min(int(round((1.0 - rate) * 2.0 ** 32)), 2 ** 32 - 1)
    return hash_bits(key, tuple(shape)) < jnp.uint32(threshold)


class Dropout(nn.Module):
    """Inverted dropout whose mask comes from `keep_mask` (fast on CPU).

    Attributes:
      rate: probability of zeroing an element, in ``[0, 1]``.
      rng_collection: the RNG stream the mask key comes from.

    Example:
      >>> y = Dropout(0.5).apply({}, jnp.ones((4,)), deterministic=True)
      >>> y.tolist()
      [1.0, 1.0, 1.0, 1.0]
    """

    rate: float
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"dropout rate must be in [0, 1], got {self.rate}")
        if deterministic or self.rate == 0.0:
            return x
        if self.rate == 1.0:
            return jnp.zeros_like(x)
        keep = keep_mask(self.make_rng(self.rng_collection), self.rate, x.shape)
        return jnp.where(keep, x / jnp.asarray(1.0 - self.rate, x.dtype), jnp.zeros_like(x))
