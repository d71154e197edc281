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
from altgrad_jax.quant.ulp import exp2_int


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


_F32_MIN_NORMAL = 2.0 ** -126
_F32_MAX = float(jnp.finfo(jnp.float32).max)


def is_scale_free(fmt: FloatFormat | str) -> bool:
    """True for formats whose exponent range covers float32's (``emax >= 127``: BF16 / E8M7).

    Scaling cannot add range to them, and any scale below 1 would push small values into float32's
    flushed subnormals: their per-tensor scale is always 1 (a plain cast, e.g. ``astype(bfloat16)``).
    """
    return get_format(fmt).emax >= 127


def scale_from_amax(amax: jax.Array, fmt: FloatFormat | str, *, margin: float = 0.0,
                    pow2: bool = False) -> jax.Array:
    """``scale = amax / fmt.max * 2^margin`` (optionally rounded up to a power of two), clamped.

    The scale is always a *normal* float32: it is clamped into ``[2^-126, float32 max]`` (for a
    tiny amax, ``amax / fmt.max`` would be a float32 subnormal, which XLA:CPU flushes to 0, and
    ``quantize`` would then return zeros and NaNs). Formats whose range covers float32's (BF16, see
    `is_scale_free`) always get 1.0. For THE per-tensor recipe used everywhere in this library see
    `tensor_scale`; this function serves delayed scaling and explicit experiments.

    Args:
      amax: the absolute maximum to cover (scalar).
      fmt: the target format.
      margin: extra headroom in binades (``margin=1`` halves the largest quantized magnitude).
      pow2: round the scale up to a power of two (then scaling itself is exact in float32).

    Returns:
      float32 scalar. A zero amax gives 1.0; a NaN/inf amax gives NaN/inf, so a divergence shows
      up in the quantized tensor instead of being hidden.

    Example:
      >>> scale_from_amax(1e-37, "E4M3").item() == 2.0 ** -126   # 1e-37 / 448: clamped, never 0
      True
    """
    fmt = get_format(fmt)
    _check_margin(margin)
    amax = jnp.asarray(amax, jnp.float32)
    if is_scale_free(fmt):
        return jnp.where(jnp.isfinite(amax), jnp.float32(1.0), amax)
    scale = amax / jnp.float32(fmt.max) * jnp.float32(2.0 ** margin)
    scale = jnp.clip(scale, jnp.float32(_F32_MIN_NORMAL), jnp.float32(_F32_MAX))
    if pow2:
        scale = jnp.minimum(_ceil_pow2(scale), jnp.float32(2.0 ** 127))
    scale = jnp.where(jnp.isfinite(amax), scale, amax)
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


def _check_binades(margin: int) -> int:
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or margin != int(margin):
        raise ValueError(f"margin must be a whole number of binades (e.g. 0 or 1), got {margin!r}")
    return int(margin)


def scale_exponent(amax: jax.Array, fmt: FloatFormat | str) -> jax.Array:
    """int32 ``k`` of the recipe scale ``2^k`` for ``amax > 0`` finite (see `tensor_scale`).

    ``k = floor(log2(amax / fmt.max)) + 1``, computed exactly on the float32 exponent and mantissa
    fields of ``amax`` and ``fmt.max`` (no division, no overflow), clipped to ``[-126, 127]``.
    """
    fmt = get_format(fmt)
    max_bits = int(fmt.max_bits)
    e_f, m_f = (max_bits >> 23) - 127, max_bits & 0x7FFFFF
    bits = float32_bits(jnp.asarray(amax, jnp.float32)) & jnp.uint32(0x7FFFFFFF)
    e_a = (bits >> 23).astype(jnp.int32) - 127
    below = ((bits & jnp.uint32(0x7FFFFF)) < jnp.uint32(m_f)).astype(jnp.int32)
    return jnp.clip(e_a - e_f + 1 - below, -126, 127)


def tensor_scale(x: jax.Array, fmt: FloatFormat | str, *, margin: int = 0) -> jax.Array:
    """THE per-tensor scale: the smallest power of two ``s`` with ``max|x| / s < fmt.max``.

    .. math::
       s = 2^{k}, \\quad k = \\mathrm{clip}\\big(\\lfloor \\log_2(\\max|x| / \\mathrm{fmt.max})
       \\rfloor + 1 + \\mathrm{margin},\\ -126,\\ 127\\big)

    so ``max|x| / s`` lies in ``[fmt.max / 2, fmt.max)``. Used by the forward pass (weights,
    embeddings), `altgrad_jax.optim.scale_by_ulp`, grid storage (`snap_to_grid`,
    `grid_optimizer`), flips, stalls, quantization health and calibration, so the model computes
    with exactly the weights the optimizer stores. Why this recipe:

    * a power of two: ``x / s`` and ``q * s`` are exact, and grids at ``s`` and ``s / 2`` nest;
    * the largest magnitude stays strictly *below* ``fmt.max * s`` (the headroom the grid needs):
      a weight stored on the grid that reaches the top value ``fmt.max * s`` doubles the scale at
      the next step, so a tensor can always widen its range;
    * never 0 and never subnormal: ``k`` is clipped to float32's normal range (a tiny amax such as
      1e-30 keeps the scale 2^-126; such a tensor then uses the upper part of the grid only);
    * formats whose range covers float32's (BF16, `is_scale_free`) get ``s = 1``: BF16
      fake-quantization is then exactly ``x.astype(bfloat16)``.

    An all-zero (or empty) tensor gets 1.0; a NaN or inf amax is returned as the scale (NaN/inf),
    so a divergence shows up in the quantized tensor. ``margin`` (whole binades, default 0) adds
    headroom for activations and gradients (``QuantPolicy.margin``); weights always use 0.

    Args:
      x: the tensor (any float dtype).
      fmt: a `FloatFormat` or a registered name.
      margin: extra binades of headroom (an integer; weights: 0).

    Returns:
      float32 scalar, a power of two (or 1.0 / NaN / inf as above).

    Example:
      >>> tensor_scale(jnp.array([0.5, -448.0]), "E4M3").item()   # 448 / 2 = 224 < 448
      2.0
      >>> tensor_scale(jnp.array([1e-3]), "BF16").item()
      1.0
    """
    fmt = get_format(fmt)
    margin = _check_binades(margin)
    amax = jax.lax.stop_gradient(abs_max(jnp.asarray(x)))
    if is_scale_free(fmt):
        s = jnp.float32(1.0)
    else:
        s = exp2_int(jnp.clip(scale_exponent(amax, fmt) + margin, -126, 127))
    s = jnp.where(jnp.isfinite(amax), s, amax)
    return jnp.where(amax == 0, jnp.float32(1.0), s)


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
