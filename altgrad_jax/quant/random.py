"""Fast per-element random bits for stochastic rounding: a counter-based hash (`hash_bits`).

Threefry (``jax.random.bits``) spends 20 rounds of 32-bit arithmetic per pair of words, which on
CPU made stochastic rounding 5x slower than round-to-nearest. Stochastic rounding needs one
uniform, independent 32-bit word per element, not cryptographic strength, so we hash the element's
index with two seed words drawn once from the key (one threefry call on 2 elements):

.. code-block:: text

   x = index * 0x9E3779B9 ^ k0      (Weyl sequence: distinct for distinct indices)
   x = fmix32(x) ^ k1               (MurmurHash3's finalizer, a bijection with full avalanche)
   x = fmix32(x)

``fmix32`` is ``x ^= x >> 16; x *= 0x85EBCA6B; x ^= x >> 13; x *= 0xC2B2AE35; x ^= x >> 16``. The
map index -> bits is a bijection for a fixed key, so no two elements of a tensor (up to 2^32) share
their bits. Tests check uniformity and the unbiasedness of the rounding built on it.

References:
  Salmon et al., 2011, "Parallel random numbers: as easy as 1, 2, 3" (counter-based generators);
  Appleby, MurmurHash3 (the ``fmix32`` finalizer).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

_U32 = jnp.uint32


def _fmix32(x: jax.Array) -> jax.Array:
    x = x ^ (x >> _U32(16))
    x = x * _U32(0x85EBCA6B)
    x = x ^ (x >> _U32(13))
    x = x * _U32(0xC2B2AE35)
    return x ^ (x >> _U32(16))


def hash_bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """uint32 array of ``shape``: one pseudo-random word per element from ``key``.

    Args:
      key: a PRNG key (typed, or a raw uint32 key of any implementation).
      shape: output shape.

    Returns:
      uint32 array; deterministic per key, different keys give unrelated streams.

    Example:
      >>> b = hash_bits(jax.random.key(0), (2, 3))
      >>> b.shape, b.dtype.name
      ((2, 3), 'uint32')
    """
    seeds = jax.random.bits(key, (2,), _U32)
    size = 1
    for d in shape:
        size *= int(d)
    idx = lax.iota(_U32, size)
    x = _fmix32((idx * _U32(0x9E3779B9)) ^ seeds[0]) ^ seeds[1]
    return _fmix32(x).reshape(shape)


def hash_uniform(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """float32 uniform in ``[0, 1)`` on a 2^-24 lattice, from `hash_bits`."""
    return (hash_bits(key, shape) >> _U32(8)).astype(jnp.float32) * jnp.float32(2.0 ** -24)
