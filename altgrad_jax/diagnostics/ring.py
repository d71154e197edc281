"""`RingBuffer`: a fixed-length window of the most recent values, as a functional pytree.

Used for windowed rates (the stall ratio, the dead-gradient fraction): a rate over the last ``W``
steps moves when the training regime changes, whereas a cumulative rate since step 0 converges to
a constant and stops carrying information.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class RingBuffer(NamedTuple):
    """The last ``W`` pushed values, newest first, and how many have been pushed (saturating at W).

    Attributes:
      values: ``[W, *shape]`` float32; slot 0 is the newest; unfilled slots are 0.
      filled: int32 scalar, ``min(pushes, W)``.
    """

    values: jax.Array
    filled: jax.Array


def init_ring_buffer(length: int, shape: tuple[int, ...] = ()) -> RingBuffer:
    """An empty buffer holding ``length`` entries of ``shape`` (float32).

    Raises:
      ValueError: if ``length`` is not a positive int.
    """
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"ring buffer length must be a positive int, got {length!r}")
    return RingBuffer(values=jnp.zeros((length, *tuple(shape)), jnp.float32),
                      filled=jnp.zeros((), jnp.int32))


def ring_push(buf: RingBuffer, value: jax.Array) -> RingBuffer:
    """Pushes ``value`` (newest first), dropping the oldest entry. Pure and jit-safe.

    Example:
      >>> b = ring_push(ring_push(init_ring_buffer(3), 1.0), 2.0)
      >>> b.values.tolist(), int(b.filled)
      ([2.0, 1.0, 0.0], 2)
    """
    value = jnp.asarray(value, jnp.float32)
    values = jnp.roll(buf.values, 1, axis=0).at[0].set(value)
    filled = jnp.minimum(buf.filled + 1, buf.values.shape[0]).astype(jnp.int32)
    return RingBuffer(values=values, filled=filled)


def ring_sum(buf: RingBuffer) -> jax.Array:
    """Sum over the window (unfilled slots are 0), per element of ``shape``."""
    return jnp.sum(buf.values, axis=0)


def ring_mean(buf: RingBuffer) -> jax.Array:
    """Mean over the filled slots; 0 for an empty buffer."""
    n = jnp.maximum(buf.filled, 1).astype(jnp.float32)
    return ring_sum(buf) / n


def ring_full(buf: RingBuffer) -> jax.Array:
    """Whether ``W`` values have been pushed (bool scalar)."""
    return buf.filled >= buf.values.shape[0]
