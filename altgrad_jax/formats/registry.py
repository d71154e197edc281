"""The format registry: names -> `FloatFormat`.

Names (case-insensitive):

* The seed 8-bit formats ``E0M7 .. E7M0`` with the project's definitions:

  ====== ==== ======= ============================================================
  name   bias nan_inf range
  ====== ==== ======= ============================================================
  E0M7   1    none    sign-magnitude fixed point, step 1/128, max 127/128
  E1M6   0    none    uniform, step 1/32, max 127/32 (= E0M7 grid x 4)
  E2M5   1    none    max 7.875, min subnormal 1/32
  E3M4   1    none    max 124, min subnormal 1/16
  E4M3   7    fn      OCP E4M3 = ml_dtypes.float8_e4m3fn: max 448, NaN 0x7F/0xFF, no inf
  E5M2   15   ieee    = ml_dtypes.float8_e5m2: max 57344, inf, NaN
  E6M1   31   none    max 1.5 * 2^32, min subnormal 2^-31
  E7M0   63   none    powers of two 2^-62 .. 2^64 and 0
  ====== ==== ======= ============================================================

* ``BF16`` (= E8M7, bias 127, ieee), ``FP16`` (= E5M10, bias 15, ieee), and the IEEE-like 16-bit
  splits ``E2M13 .. E8M7`` with bias ``2^(E-1) - 1`` (all of them fit float32).
* Every `ml_dtypes` narrow float that has a sign and a zero: ``float8_e4m3fn``, ``float8_e5m2``,
  ``float8_e3m4``, ``float8_e4m3``, ``float8_e4m3fnuz``, ``float8_e5m2fnuz``, ``float8_e4m3b11fnuz``,
  ``float6_e2m3fn``, ``float6_e3m2fn``, ``float4_e2m1fn``, ``bfloat16``, ``float16``.
  (``float8_e8m0fnu`` is unsigned and has no zero, so it is not an ExMy format in this sense.)

Users build their own with `make_format` and may `register_format` it under a new name.
"""

from __future__ import annotations

from altgrad_jax.formats.spec import FloatFormat

_REGISTRY: dict[str, FloatFormat] = {}


def make_format(*, exponent_bits: int, mantissa_bits: int, bias: int | None = None,
                nan_inf: str = "none", subnormals: bool = True, name: str = "") -> FloatFormat:
    """Builds a `FloatFormat`; ``bias=None`` means the IEEE default ``2^(E-1) - 1`` (1 for E=0).

    Raises:
      ValueError: naming the offending field, if the spec is invalid or float32 cannot carry it.

    Example:
      >>> make_format(exponent_bits=3, mantissa_bits=4, bias=1).max
      124.0
    """
    if bias is None:
        bias = (1 << (exponent_bits - 1)) - 1 if exponent_bits > 0 else 1
    if not name:
        name = f"E{exponent_bits}M{mantissa_bits}"
    return FloatFormat(name=name, exponent_bits=exponent_bits, mantissa_bits=mantissa_bits,
                       bias=bias, nan_inf=nan_inf, subnormals=subnormals)


def register_format(name: str, fmt: FloatFormat, *, overwrite: bool = False) -> FloatFormat:
    """Registers ``fmt`` under ``name`` (case-insensitive) so `get_format(name)` returns it."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a format name must be a non-empty string, got {name!r}")
    if not isinstance(fmt, FloatFormat):
        raise ValueError(f"register_format needs a FloatFormat, got {type(fmt).__name__}")
    key = name.strip().upper()
    if key in _REGISTRY and not overwrite:
        raise ValueError(f"format name {name!r} is already registered; pass overwrite=True")
    if key not in _REGISTRY:
        _DISPLAY_NAMES.append(name.strip())
    _REGISTRY[key] = fmt
    return fmt


def unregister_format(name: str) -> None:
    """Removes a format added with `register_format`; the built-in names cannot be removed."""
    key = name.strip().upper() if isinstance(name, str) else name
    if key not in _REGISTRY:
        raise ValueError(f"format {name!r} is not registered")
    if any(key == b.upper() for b in BUILTIN_FORMATS):
        raise ValueError(f"format {name!r} is built in and cannot be unregistered")
    del _REGISTRY[key]
    _DISPLAY_NAMES[:] = [n for n in _DISPLAY_NAMES if n.upper() != key]


def format_names() -> list[str]:
    """All registered names, in registration order."""
    return list(_DISPLAY_NAMES)


def get_format(name: str | FloatFormat) -> FloatFormat:
    """Returns the registered format called ``name`` (a `FloatFormat` is returned unchanged).

    Raises:
      ValueError: for an unknown name, listing the valid names.

    Example:
      >>> get_format("e5m2").max
      57344.0
    """
    if isinstance(name, FloatFormat):
        return name
    if not isinstance(name, str):
        raise ValueError(f"a format is named by a string, got {type(name).__name__}: {name!r}")
    fmt = _REGISTRY.get(name.strip().upper())
    if fmt is None:
        raise ValueError(f"unknown format {name!r}; valid names: {', '.join(format_names())} "
                         "(or build one with altgrad_jax.formats.make_format)")
    return fmt


_DISPLAY_NAMES: list[str] = []


def _builtin(name: str, **kwargs) -> None:
    register_format(name, make_format(name=name, **kwargs))


# Seed 8-bit formats (DESIGN.md section 3).
_builtin("E0M7", exponent_bits=0, mantissa_bits=7, bias=1)
_builtin("E1M6", exponent_bits=1, mantissa_bits=6, bias=0)
_builtin("E2M5", exponent_bits=2, mantissa_bits=5, bias=1)
_builtin("E3M4", exponent_bits=3, mantissa_bits=4, bias=1)
_builtin("E4M3", exponent_bits=4, mantissa_bits=3, bias=7, nan_inf="fn")
_builtin("E5M2", exponent_bits=5, mantissa_bits=2, bias=15, nan_inf="ieee")
_builtin("E6M1", exponent_bits=6, mantissa_bits=1, bias=31)
_builtin("E7M0", exponent_bits=7, mantissa_bits=0, bias=63)
# 16-bit.
_builtin("BF16", exponent_bits=8, mantissa_bits=7, bias=127, nan_inf="ieee")
_builtin("FP16", exponent_bits=5, mantissa_bits=10, bias=15, nan_inf="ieee")
for _e in range(2, 9):
    if f"E{_e}M{15 - _e}" not in ("E5M10", "E8M7"):
        _builtin(f"E{_e}M{15 - _e}", exponent_bits=_e, mantissa_bits=15 - _e, nan_inf="ieee")
register_format("E5M10", _REGISTRY["FP16"])
register_format("E8M7", _REGISTRY["BF16"])
# ml_dtypes names.
_builtin("float8_e4m3fn", exponent_bits=4, mantissa_bits=3, bias=7, nan_inf="fn")
_builtin("float8_e5m2", exponent_bits=5, mantissa_bits=2, bias=15, nan_inf="ieee")
_builtin("float8_e3m4", exponent_bits=3, mantissa_bits=4, bias=3, nan_inf="ieee")
_builtin("float8_e4m3", exponent_bits=4, mantissa_bits=3, bias=7, nan_inf="ieee")
_builtin("float8_e4m3fnuz", exponent_bits=4, mantissa_bits=3, bias=8, nan_inf="fnuz")
_builtin("float8_e5m2fnuz", exponent_bits=5, mantissa_bits=2, bias=16, nan_inf="fnuz")
_builtin("float8_e4m3b11fnuz", exponent_bits=4, mantissa_bits=3, bias=11, nan_inf="fnuz")
_builtin("float6_e2m3fn", exponent_bits=2, mantissa_bits=3, bias=1)
_builtin("float6_e3m2fn", exponent_bits=3, mantissa_bits=2, bias=3)
_builtin("float4_e2m1fn", exponent_bits=2, mantissa_bits=1, bias=1)
_builtin("bfloat16", exponent_bits=8, mantissa_bits=7, bias=127, nan_inf="ieee")
_builtin("float16", exponent_bits=5, mantissa_bits=10, bias=15, nan_inf="ieee")

SEED_FORMATS = ("E0M7", "E1M6", "E2M5", "E3M4", "E4M3", "E5M2", "E6M1", "E7M0")
# Every name registered at import (user registrations are not in it).
BUILTIN_FORMATS = tuple(_DISPLAY_NAMES)
