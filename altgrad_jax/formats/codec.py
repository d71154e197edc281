"""Bit-level encode / decode between float32 and the integer codes of any `FloatFormat`.

Everything here is integer arithmetic on float32 bit patterns (``lax.bitcast_convert_type``), so it
is exact, vectorised, jit/vmap-safe, and XLA cannot elide it (unlike an
``x.astype(float8).astype(float32)`` round trip, which XLA on GPU may fold away).

Semantics implemented (the same for every format):

* Round to nearest, ties to even, on the linear significand. Values below the smallest normal round
  on the subnormal grid (step ``2^(emin - M)``), and a subnormal that rounds up past the last
  subnormal carries into the smallest normal (the integer add carries into the exponent field).
  Without subnormals the grid below ``min_normal`` is ``{0, min_normal}`` and a tie goes to 0.
* +-0 keep their sign (``fnuz`` formats have no -0: it encodes as +0).
* Finite overflow (a value that rounds above ``max``): ``saturate=True`` (the training default)
  clamps to +-max; ``saturate=False`` follows the format: +-inf for ``ieee``, NaN for ``fn`` and
  ``fnuz``, and +-max for ``none`` (no other code exists; this equals the ml_dtypes cast).
* +-inf inputs: like overflow (+-max when saturating, else +-inf / NaN / +-max).
* NaN inputs: ``ieee`` -> sign | all-ones exponent | quiet bit, payload dropped (what the
  ml_dtypes float8/bfloat16 casts do; NumPy's float16 cast keeps payload bits instead);
  ``fn`` -> ``S.1..1.1..1``; ``fnuz`` -> ``1.0..0.0..0``; ``none`` -> +0 (the format has no
  NaN; `altgrad_jax.quant.quantize` never goes through codes and keeps NaN as NaN).

Bit layout example, E5M2 (bias 15)::

    0 10000 00  ->  2.0          0 11110 11  ->  57344.0 (max)     0 11111 00  ->  +inf
    0 00000 01  ->  2^-16        0 11111 10  ->  NaN (quiet)       1 00000 00  ->  -0.0
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from altgrad_jax.formats.spec import FloatFormat, _f32_bits

_U32 = jnp.uint32
_EXP_MASK = 0x7F800000
_ABS_MASK = 0x7FFFFFFF
_MANT_MASK = 0x007FFFFF


def _c(value: int) -> jax.Array:
    return jnp.asarray(value, _U32)


def _shl(x: jax.Array, s: jax.Array) -> jax.Array:
    return lax.shift_left(x, s.astype(_U32) if hasattr(s, "astype") else _c(s))


def _shr(x: jax.Array, s: jax.Array) -> jax.Array:
    return lax.shift_right_logical(x, s.astype(_U32) if hasattr(s, "astype") else _c(s))


def float32_bits(x: jax.Array) -> jax.Array:
    """float32 -> its uint32 bit pattern."""
    return lax.bitcast_convert_type(jnp.asarray(x, jnp.float32), _U32)


def bits_float32(bits: jax.Array) -> jax.Array:
    """uint32 bit pattern -> float32."""
    return lax.bitcast_convert_type(bits.astype(_U32), jnp.float32)


def round_magnitude_bits(abs_bits: jax.Array, fmt: FloatFormat,
                         random_bits: jax.Array | None = None) -> jax.Array:
    """Rounds non-negative finite float32 values (given as bits) onto ``fmt``'s grid.

    Args:
      abs_bits: uint32 bit patterns of ``|y|``; must be finite (``< 0x7F800000``).
      fmt: the target format.
      random_bits: ``None`` for round-to-nearest-even, or uniform uint32 bits of the same shape for
        unbiased stochastic rounding (round up with probability equal to the distance from the
        lower neighbour over the spacing; only the two neighbours can come out).

    Returns:
      uint32 float32 bit patterns of the rounded magnitude. Not saturated: the caller clamps
      against ``fmt.max_bits``.
    """
    m = fmt.mantissa_bits
    emin_b = fmt.emin + 127  # biased float32 exponent of the format's smallest normal, >= 1
    q_exp = fmt.emin - m if fmt.subnormals else fmt.emin  # log2 of the smallest positive value
    q_bits = _f32_bits(2.0 ** q_exp)

    e_field = _shr(abs_bits, 23).astype(jnp.int32)
    e_eff = jnp.maximum(e_field, 1)  # float32 subnormals share the exponent of 2^-126

    # Main path (|y| >= smallest positive value): drop s low bits of the float32 pattern with
    # RNE (or add s random bits and truncate); the carry propagates into the exponent field.
    shift = jnp.minimum((23 - m) + jnp.maximum(emin_b - e_eff, 0), 23).astype(_U32)
    mask = _shl(_c(1), shift) - _c(1)
    if random_bits is None:
        # Ties to even on the *code*: its lowest bit sits at bit `shift` of the float32 pattern,
        # except at shift 23. For M >= 1 that only happens in the lowest subnormal binade [Q, 2Q)
        # whose code is 1 (odd): OR-ing in the implicit bit gives exactly that. For M == 0 the code
        # is the format's exponent field, whose parity is the float32 exponent's, flipped when the
        # biases differ by an odd amount.
        if m > 0:
            lsb = _shr(abs_bits | _c(1 << 23), shift) & _c(1)
        else:
            flip = (emin_b + 1) & 1  # format exponent field = float32 exponent - (emin_b - 1)
            lsb = (_shr(abs_bits, 23) ^ _c(flip)) & _c(1)
        inc = _shr(mask, 1) + lsb
    else:
        inc = random_bits & mask
    main = (abs_bits + inc) & ~mask

    # Tiny path (|y| < Q, the smallest positive value): result is 0 or Q.
    if random_bits is None:
        up = abs_bits > _c(_f32_bits(2.0 ** (q_exp - 1)))  # a tie (== Q/2) goes to 0 (even)
    else:
        # |y| / Q = sig / 2^t with t >= 1; round up with probability sig / 2^t.
        sig = jnp.where(e_field > 0, (abs_bits & _c(_MANT_MASK)) | _c(1 << 23),
                        abs_bits & _c(_MANT_MASK))
        t = (q_exp + 150) - e_eff
        t_lo = jnp.clip(t, 1, 31).astype(_U32)
        t_hi = jnp.clip(t - 32, 0, 31).astype(_U32)
        mask_t = jnp.where(t >= 32, _c(0xFFFFFFFF), _shl(_c(1), t_lo) - _c(1))
        up = (random_bits & mask_t) < _shr(sig, t_hi)
    tiny = jnp.where(up, _c(q_bits), _c(0))
    return jnp.where(abs_bits < _c(q_bits), tiny, main)


def _pack_magnitude(r: jax.Array, fmt: FloatFormat) -> jax.Array:
    """float32 bits of an on-grid magnitude (<= max) -> the format's magnitude code bits."""
    m = fmt.mantissa_bits
    emin_b = fmt.emin + 127
    r_exp = _shr(r, 23).astype(jnp.int32)
    # Normal: exponent field = float32 exponent - (emin_b - 1); mantissa = top M bits.
    mag_normal = (_shl((r_exp - (emin_b - 1)).clip(0).astype(_U32), m)
                  | (_shr(r, 23 - m) & _c((1 << m) - 1)))
    # Subnormal: k = value / 2^(emin - M) = sig >> t.
    sig = jnp.where(r_exp > 0, (r & _c(_MANT_MASK)) | _c(1 << 23), r & _c(_MANT_MASK))
    t = jnp.clip((emin_b + 23 - m) - jnp.maximum(r_exp, 1), 0, 31)
    mag_sub = _shr(sig, t)
    if fmt.exponent_bits == 0:
        return mag_sub
    return jnp.where(r >= _c(_f32_bits(fmt.min_normal)), mag_normal, mag_sub)


def encode(x: jax.Array, fmt: FloatFormat, *, saturate: bool = True) -> jax.Array:
    """Encodes float values into ``fmt``'s integer codes (round to nearest, ties to even).

    Args:
      x: any float array (computed in float32).
      fmt: the target format.
      saturate: clamp finite overflow and +-inf to +-max (default). ``False`` follows the format's
        own overflow behaviour (inf for ``ieee``, NaN for ``fn``/``fnuz``), which is what the
        ``ml_dtypes`` casts do.

    Returns:
      Codes of dtype ``fmt.code_dtype`` (uint8 / uint16 / uint32), same shape as ``x``.

    Example:
      >>> from altgrad_jax.formats import get_format
      >>> encode(jnp.array([1.0, 3.0, 1e9]), get_format("E5M2")).tolist()
      [60, 66, 123]
    """
    e, m = fmt.exponent_bits, fmt.mantissa_bits
    nb = e + m
    bits = float32_bits(x)
    sign = _shr(bits, 31)
    abs_bits = bits & _c(_ABS_MASK)
    is_nan = abs_bits > _c(_EXP_MASK)
    is_inf = abs_bits == _c(_EXP_MASK)
    r = round_magnitude_bits(jnp.where(is_nan | is_inf, _c(0), abs_bits), fmt)
    overflow = (r > _c(fmt.max_bits)) | is_inf
    # +-inf saturates to +-max like finite overflow (it must not keep the zeroed r).
    mag = _pack_magnitude(jnp.where(is_inf, _c(fmt.max_bits), jnp.minimum(r, _c(fmt.max_bits))),
                          fmt)

    # Codes that mean NaN: NaN inputs, and overflow when not saturating in fn/fnuz formats.
    to_nan = is_nan
    if not saturate and fmt.nan_inf == "ieee":
        mag = jnp.where(overflow, _c(((1 << e) - 1) << m), mag)  # +-inf
    elif not saturate and fmt.nan_inf in ("fn", "fnuz"):
        to_nan = to_nan | overflow
    if fmt.nan_inf == "ieee":  # quiet NaN, payload dropped (as ml_dtypes' float8/bfloat16 casts)
        mag = jnp.where(to_nan, _c((((1 << e) - 1) << m) | (1 << (m - 1))), mag)
    elif fmt.nan_inf == "fn":  # S.1..1.1..1
        mag = jnp.where(to_nan, _c((1 << nb) - 1), mag)
    elif fmt.nan_inf == "fnuz":  # 1.0..0.0..0; there is no -0, so other zero magnitudes are +0
        mag = jnp.where(to_nan, _c(0), mag)
        sign = jnp.where(to_nan, _c(1), jnp.where(mag == 0, _c(0), sign))
    else:  # none: the format has no NaN; NaN encodes as +0
        mag = jnp.where(to_nan, _c(0), mag)
        sign = jnp.where(to_nan, _c(0), sign)
    code = _shl(sign, nb) | mag
    return code.astype(fmt.code_dtype)


def decode(codes: jax.Array, fmt: FloatFormat) -> jax.Array:
    """Decodes integer codes of ``fmt`` into float32 (exact: every format fits float32).

    Codes of specials decode to +-inf / NaN as the format defines them; with
    ``subnormals=False`` the subnormal codes decode to +-0.

    Example:
      >>> from altgrad_jax.formats import get_format
      >>> decode(jnp.array([0x3C, 0x7B, 0x7C], jnp.uint8), get_format("E5M2")).tolist()
      [1.0, 57344.0, inf]
    """
    e, m = fmt.exponent_bits, fmt.mantissa_bits
    nb = e + m
    c = jnp.asarray(codes).astype(_U32)
    sign = _shr(c, nb) & _c(1)
    mag = c & _c((1 << nb) - 1)
    e_field = _shr(mag, m)
    mant = mag & _c((1 << m) - 1)

    normal = _shl(e_field + _c(127 - fmt.bias), 23) | _shl(mant, 23 - m)
    if fmt.subnormals and m > 0:
        p = 31 - lax.clz(mant).astype(jnp.int32)  # floor(log2(mant)) for mant > 0
        exp_true = (fmt.emin - m) + p
        sub_normal_f32 = _shl((exp_true + 127).clip(1).astype(_U32), 23) | (
            _shl(mant, (23 - p).clip(0, 31)) & _c(_MANT_MASK))
        sub_denormal_f32 = _shl(mant, max(fmt.emin - m + 149, 0))
        sub = jnp.where(exp_true >= -126, sub_normal_f32, sub_denormal_f32)
        sub = jnp.where(mant == 0, _c(0), sub)
    else:
        sub = jnp.zeros_like(mant)
    out = sub if e == 0 else jnp.where(e_field > 0, normal, sub)

    if fmt.nan_inf == "ieee":
        top = e_field == _c((1 << e) - 1)
        out = jnp.where(top, jnp.where(mant == 0, _c(_EXP_MASK), _c(0x7FC00000)), out)
    elif fmt.nan_inf == "fn":
        out = jnp.where(mag == _c((1 << nb) - 1), _c(0x7FC00000), out)
    elif fmt.nan_inf == "fnuz":
        is_nan = (mag == 0) & (sign == 1)
        out = jnp.where(is_nan, _c(0x7FC00000), out)
        sign = jnp.where(is_nan, _c(0), sign)
    return bits_float32(out | _shl(sign, 31))
