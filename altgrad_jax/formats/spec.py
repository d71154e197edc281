"""`FloatFormat`: the specification of a sign-magnitude ExMy floating-point format.

A format is ``1 + E + M`` bits: a sign bit, ``E`` exponent bits and ``M`` mantissa bits.

* Exponent field ``e > 0`` (normal): ``value = (-1)^s * 2^(e - bias) * (1 + m / 2^M)``.
* Exponent field ``e == 0`` (subnormal): ``value = (-1)^s * 2^(1 - bias) * (m / 2^M)``; with
  ``subnormals=False`` these codes decode to +-0 and nothing rounds onto them.
* ``E == 0`` is sign-magnitude fixed point: every code is "subnormal", step ``2^(1 - bias - M)``.

Special values (``nan_inf``):

* ``"ieee"``: the all-ones exponent is reserved: mantissa 0 is +-inf, anything else NaN (E5M2, FP16).
* ``"fn"``: finite-only except one NaN per sign, the all-ones code ``S.1..1.1..1`` (OCP E4M3 = e4m3fn).
* ``"fnuz"``: finite-only, no negative zero; the code ``1.0..0.0..0`` (0x80 for 8 bits) is the one NaN.
* ``"none"``: every code is a finite number (the seed formats E0M7..E3M4, E6M1, E7M0; float6/float4).

Every format here must be carried exactly by float32 (values are simulated in float32), so the
constructor rejects formats whose exponent range or mantissa does not fit float32.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import ml_dtypes
import numpy as np

NAN_INF_POLICIES = ("ieee", "fn", "fnuz", "none")

# (E, M, bias, nan_inf, subnormals) -> ml_dtypes twin name.
_TWINS = {
    (4, 3, 7, "fn", True): "float8_e4m3fn",
    (5, 2, 15, "ieee", True): "float8_e5m2",
    (3, 4, 3, "ieee", True): "float8_e3m4",
    (4, 3, 7, "ieee", True): "float8_e4m3",
    (4, 3, 8, "fnuz", True): "float8_e4m3fnuz",
    (5, 2, 16, "fnuz", True): "float8_e5m2fnuz",
    (4, 3, 11, "fnuz", True): "float8_e4m3b11fnuz",
    (2, 3, 1, "none", True): "float6_e2m3fn",
    (3, 2, 3, "none", True): "float6_e3m2fn",
    (2, 1, 1, "none", True): "float4_e2m1fn",
    (8, 7, 127, "ieee", True): "bfloat16",
    (5, 10, 15, "ieee", True): "float16",
}


def _f32_bits(value: float) -> int:
    return int(np.array(value, np.float32).view(np.uint32))


@dataclasses.dataclass(frozen=True, kw_only=True)
class FloatFormat:
    """A sign-magnitude ExMy floating-point format (frozen and hashable: usable as a static jit arg).

    Attributes:
      name: display name, e.g. ``"E5M2"``. Not part of equality (two names for one format are equal).
      exponent_bits: E, 0..8.
      mantissa_bits: M, 0..22 (float32 itself has 23: use ``None``, i.e. no quantization, instead).
      bias: exponent bias; the smallest normal is ``2^(1 - bias)``.
      nan_inf: one of ``"ieee"``, ``"fn"``, ``"fnuz"``, ``"none"`` (see the module docstring).
      subnormals: whether the exponent-field-0 codes carry subnormal values (gradual underflow).

    Example:
      >>> fmt = FloatFormat(name="E4M3", exponent_bits=4, mantissa_bits=3, bias=7, nan_inf="fn")
      >>> fmt.max, fmt.min_normal, fmt.min_subnormal
      (448.0, 0.015625, 0.001953125)
    """

    name: str = dataclasses.field(compare=False, default="")
    exponent_bits: int
    mantissa_bits: int
    bias: int
    nan_inf: str = "none"
    subnormals: bool = True

    def __post_init__(self):
        e, m = self.exponent_bits, self.mantissa_bits
        for field, value in (("exponent_bits", e), ("mantissa_bits", m), ("bias", self.bias)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"FloatFormat.{field} must be an int, got {value!r}")
        if self.nan_inf not in NAN_INF_POLICIES:
            raise ValueError(
                f"FloatFormat.nan_inf must be one of {NAN_INF_POLICIES}, got {self.nan_inf!r}")
        if not 0 <= e <= 8:
            raise ValueError(
                f"FloatFormat.exponent_bits={e} is outside 0..8: float32 has 8 exponent bits, so a "
                "wider exponent cannot be simulated in float32")
        if not 0 <= m <= 22:
            raise ValueError(
                f"FloatFormat.mantissa_bits={m} is outside 0..22: float32 has 23 mantissa bits, so "
                "M >= 23 is float32 itself (use None for 'not quantized') and more cannot be carried")
        if e + m < 1:
            raise ValueError("FloatFormat needs at least one exponent or mantissa bit")
        if self.nan_inf == "ieee" and e < 2:
            raise ValueError(
                f"FloatFormat.nan_inf='ieee' needs exponent_bits >= 2 (got {e}): the all-ones "
                "exponent is reserved for inf/NaN")
        if self.nan_inf == "ieee" and m < 1:
            raise ValueError("FloatFormat.nan_inf='ieee' needs mantissa_bits >= 1: with M=0 the "
                             "all-ones exponent can only be inf and NaN has no code")
        if self.nan_inf == "fn" and e < 1:
            raise ValueError("FloatFormat.nan_inf='fn' needs exponent_bits >= 1")
        if e == 0 and not self.subnormals:
            raise ValueError("a fixed-point format (exponent_bits=0) consists of subnormal codes "
                             "only: subnormals=False would leave nothing but zero")
        if self.emin < -126:
            raise ValueError(
                f"FloatFormat(bias={self.bias}) has smallest normal 2^{self.emin}, below float32's "
                "2^-126: float32 cannot carry it; lower the bias")
        if self.emax > 127:
            raise ValueError(
                f"FloatFormat(exponent_bits={e}, bias={self.bias}) reaches 2^{self.emax}, above "
                "float32's 2^127: float32 cannot carry it; raise the bias or use fewer exponent bits")
        if self.max_code_magnitude <= 0:
            raise ValueError(f"FloatFormat {self} has no positive finite value")

    # ----------------------------------------------------------------------------------- layout
    @property
    def bits(self) -> int:
        """Total width including the sign bit."""
        return 1 + self.exponent_bits + self.mantissa_bits

    @property
    def code_dtype(self) -> np.dtype:
        """Smallest unsigned integer dtype that holds a code."""
        return np.dtype(np.uint8 if self.bits <= 8 else np.uint16 if self.bits <= 16 else np.uint32)

    @property
    def num_codes(self) -> int:
        return 1 << self.bits

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal (``1 - bias``); also the exponent of the subnormal binade."""
        return 1 - self.bias

    @property
    def max_code_magnitude(self) -> int:
        """Magnitude bits (code without sign) of the largest finite value."""
        e, m = self.exponent_bits, self.mantissa_bits
        if self.nan_inf == "ieee":
            return (((1 << e) - 1) << m) - 1
        if self.nan_inf == "fn":
            return (1 << (e + m)) - 2
        return (1 << (e + m)) - 1

    @property
    def emax(self) -> int:
        """Exponent (floor(log2)) of the largest finite value."""
        e_field = self.max_code_magnitude >> self.mantissa_bits
        if e_field == 0:  # fixed point / subnormal-only: the largest value lies below 2^emin
            mag = self.max_code_magnitude
            return self.emin - self.mantissa_bits + mag.bit_length() - 1
        return e_field - self.bias

    # ----------------------------------------------------------------------------------- values
    def _value_of_magnitude(self, mag: int) -> float:
        m = self.mantissa_bits
        e_field, mant = mag >> m, mag & ((1 << m) - 1)
        if e_field == 0:
            return math.ldexp(mant, self.emin - m) if self.subnormals else 0.0
        return math.ldexp((1 << m) + mant, e_field - self.bias - m)

    @property
    def max(self) -> float:
        """Largest finite value."""
        return self._value_of_magnitude(self.max_code_magnitude)

    @property
    def min_normal(self) -> float:
        """Smallest positive normal value ``2^emin`` (for fixed point: the step's binade bound)."""
        return math.ldexp(1.0, self.emin)

    @property
    def min_subnormal(self) -> float:
        """Smallest positive value: ``2^(emin - M)`` with subnormals, else ``min_normal``."""
        return math.ldexp(1.0, self.emin - self.mantissa_bits) if self.subnormals else self.min_normal

    @property
    def has_inf(self) -> bool:
        return self.nan_inf == "ieee"

    @property
    def has_nan(self) -> bool:
        return self.nan_inf != "none"

    @property
    def is_uniform(self) -> bool:
        """True when the grid spacing is the same everywhere (fixed point, and E1 with subnormals)."""
        return self.exponent_bits == 0 or (self.exponent_bits == 1 and self.subnormals)

    @property
    def ml_dtype(self) -> Any | None:
        """The `ml_dtypes` (or NumPy) dtype with exactly these semantics, or None."""
        key = (self.exponent_bits, self.mantissa_bits, self.bias, self.nan_inf, self.subnormals)
        name = _TWINS.get(key)
        if name is None:
            return None
        return np.dtype(np.float16) if name == "float16" else np.dtype(getattr(ml_dtypes, name))

    @property
    def num_finite(self) -> int:
        """Number of distinct finite values (+0 and -0 counted once)."""
        return int(self.grid().size)

    def grid(self) -> np.ndarray:
        """Every distinct finite value, sorted ascending, as float32 (-0 folded into +0)."""
        return _grid(self)

    # ------------------------------------------------------------------ constants for the codecs
    @property
    def max_bits(self) -> int:
        """float32 bit pattern of ``max``."""
        return _f32_bits(self.max)

    def __str__(self) -> str:  # concise, used in error messages and logs
        label = self.name or f"E{self.exponent_bits}M{self.mantissa_bits}"
        return (f"{label}(E={self.exponent_bits}, M={self.mantissa_bits}, bias={self.bias}, "
                f"{self.nan_inf}{'' if self.subnormals else ', no subnormals'})")


@functools.lru_cache(maxsize=None)
def _grid_cached(fmt: FloatFormat) -> np.ndarray:
    values = {fmt._value_of_magnitude(mag) for mag in range(fmt.max_code_magnitude + 1)}
    pos = np.array(sorted(values), dtype=np.float64)
    full = np.concatenate([-pos[:0:-1], pos]) if pos[0] == 0.0 else np.concatenate([-pos[::-1], pos])
    out = full.astype(np.float32)
    out.setflags(write=False)
    return out


def _grid(fmt: FloatFormat) -> np.ndarray:
    return _grid_cached(fmt)
