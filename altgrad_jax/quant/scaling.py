"""Per-tensor scaling: current (just-in-time amax) and delayed (amax history) scaling.

A scaled format represents ``x`` as ``scale * q`` with ``q`` on the format's grid. Choosing
``scale = amax / fmt.max`` maps the tensor's largest magnitude onto the format's largest value.

Note: under per-tensor amax scaling the exponent bias has no effect (changing the bias multiplies
the grid by a power of two, which the scale absorbs exactly), so e.g. E3M4 with bias 1 and bias 3
quantize identically, and E1M6 (bias 0) is the E0M7 grid times 4: identical quantized tensors.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jax import lax

from altgrad_jax.formats import FloatFormat, bits_float32, float32_bits, get_format


def _check_margin(margin: float) -> None:
    if not isinstance(margin, (int, float)) or margin != margin:
        raise ValueError(f"margin must be a real number of binades (e.g. 0 or 1), got {margin!r}")


def _ceil_pow2(s: jax.Array) -> jax.Array:
    """Smallest power of two >= s for s >= 0, exact (built from bits: XLA's exp2/log2 on CPU are
    approximate, so ``exp2(ceil(log2(s)))`` is off by an ulp or a whole binade). NaN/inf/0 pass."""
    bits = float32_bits(s)
    e_field = bits >> 23
    mant = bits & jnp.uint32(0x007FFFFF)
    normal = (e_field + (mant != 0).astype(jnp.uint32)) << 23  # exponent 255 = +inf: overflow
    # float32 denormal: mant * 2^-149 -> the single bit 2^ceil(log2(mant)) (bit 23 = 2^-126).
    denormal = jnp.uint32(1) << (32 - lax.clz(mant - jnp.uint32(1))).astype(jnp.uint32)
    out = bits_float32(jnp.where(e_field > 0, normal, denormal))
    return jnp.where(jnp.isfinite(s) & (s > 0), out, s)


def scale_from_amax(amax: jax.Array, fmt: FloatFormat | str, *, margin: float = 0.0,
                    pow2: bool = False) -> jax.Array:
    """``scale = amax / fmt.max * 2^margin`` (optionally rounded up to a power of two).

    Args:
      amax: the absolute maximum to cover (scalar).
      fmt: the target format.
      margin: extra headroom in binades (``margin=1`` halves the largest quantized magnitude).
      pow2: round the scale up to a power of two (then scaling itself is exact in float32).

    Returns:
      float32 scalar. A zero amax gives 1.0; a NaN/inf amax gives NaN/inf, so a divergence shows
      up in the quantized tensor instead of being hidden.
    """
    fmt = get_format(fmt)
    _check_margin(margin)
    amax = jnp.asarray(amax, jnp.float32)
    scale = amax / jnp.float32(fmt.max) * jnp.float32(2.0 ** margin)
    if pow2:
        scale = _ceil_pow2(scale)
    return jnp.where(amax == 0, jnp.float32(1.0), scale)


def amax_scale(x: jax.Array, fmt: FloatFormat | str, *, margin: float = 0.0,
               pow2: bool = False) -> jax.Array:
    """Current (per-tensor, just-in-time) scaling: `scale_from_amax` of ``max|x|``.

    Example:
      >>> amax_scale(jnp.array([0.5, -896.0]), "E4M3").item()
      2.0
    """
    x = jnp.asarray(x)
    return scale_from_amax(jax.lax.stop_gradient(abs_max(x)), fmt, margin=margin, pow2=pow2)


def abs_max(x: jax.Array) -> jax.Array:
    """float32 ``max|x|`` (0 for an empty array; NaN if ``x`` holds a NaN).

    Computed as ``max(max(x), -min(x))``: two plain reductions of ``x`` itself. (``max(abs(x))`` is
    the same number, but XLA on CPU may write ``abs(x)`` to a full-size temporary first, which on
    large tensors costs more than both reductions.)
    """
    x = jnp.asarray(x)
    if x.size == 0:
        return jnp.float32(0.0)
    return jnp.maximum(jnp.max(x), -jnp.min(x)).astype(jnp.float32)


class DelayedScalingState(NamedTuple):
    """Amax history for delayed scaling (newest first). A pytree: checkpoint it with the model."""

    amax_history: jax.Array  # [history_length] float32


def init_delayed_scaling(history_length: int = 16) -> DelayedScalingState:
    """An empty (all-zero) amax history of ``history_length`` steps."""
    if not isinstance(history_length, int) or history_length < 1:
        raise ValueError(f"history_length must be a positive int, got {history_length!r}")
    return DelayedScalingState(amax_history=jnp.zeros((history_length,), jnp.float32))


def delayed_scale(state: DelayedScalingState, fmt: FloatFormat | str, *, margin: float = 0.0,
                  pow2: bool = False) -> jax.Array:
    """The scale for this step from the history (max over the window); 1.0 while it is empty.

    The current tensor is *not* part of it: that is what makes the scaling "delayed", and why
    values can overflow (saturate) under delayed scaling but never under current scaling.
    """
    return scale_from_amax(jnp.max(state.amax_history), fmt, margin=margin, pow2=pow2)


def update_delayed_scaling(state: DelayedScalingState, x: jax.Array) -> DelayedScalingState:
    """Pushes ``max|x|`` into the history (functional; drops the oldest entry).

    Example:
      >>> s = init_delayed_scaling(4)
      >>> s = update_delayed_scaling(s, jnp.array([3.0, -5.0]))
      >>> s.amax_history.tolist()
      [5.0, 0.0, 0.0, 0.0]
    """
    amax = jax.lax.stop_gradient(abs_max(x))
    hist = jnp.roll(state.amax_history, 1).at[0].set(amax)
    return DelayedScalingState(amax_history=hist)
