"""Native FP8 matmuls: scaled ``float8_e4m3fn`` / ``float8_e5m2`` operands fed to XLA's dot.

`NativeFP8DotGeneral` computes the same product as the simulated
`altgrad_jax.quant.QuantizedDotGeneral`, but instead of rounding in float32 and multiplying
float32 matrices it casts the scaled operands to the hardware's 8-bit dtypes and lets XLA emit an
FP8 GEMM (cuBLASLt on Hopper / Ada; on CPU XLA upcasts and multiplies in float32):

.. math::
   y = s_x s_w \\,\\big(\\mathrm{f8}(x / s_x) \\cdot \\mathrm{f8}(w / s_w)\\big), \\qquad
   s = \\mathrm{tensor\\_scale}(\\cdot, \\mathrm{fmt})

with float32 accumulation. Backward (``custom_vjp``): the output cotangent is scaled and cast to
the gradient format (E5M2 by default in recipes) and both gradient GEMMs take 8-bit operands too:
``dx = s_g s_w (g8 . w8^T)``, ``dw = s_x s_g (x8^T . g8)`` (straight-through for ``x`` and ``w``,
as the simulated path). Without a gradient format the cotangent stays float32 and meets the
dequantized 8-bit operands.

Equality with the simulated path: the scales are powers of two, so ``x / s`` is exact, the cast
rounds to nearest-even exactly like `altgrad_jax.quant.quantize` (values are clipped to +-max first:
training saturation), and every product of two 8-bit values is exact in float32. Only the order of
the float32 accumulation may differ (bitwise equal on XLA:CPU in the tests; within
``K * 2^-24`` relative of the sum of |products| on a GPU). Non-finite inputs: a NaN propagates
(NaN scale); +-inf gives NaN here where the simulated path keeps inf.

Only E4M3 (``float8_e4m3fn``) and E5M2 (``float8_e5m2``) have native dtypes in XLA's GEMMs; any
other format raises a ValueError (use the simulated path). Only the dense contraction
``x[..., K] . w[K, N]`` (what `QDense` uses) is supported.

Example:
  >>> dg = NativeFP8DotGeneral(weight="E4M3", activation="E4M3", gradient="E5M2")
  >>> y = dg(jnp.ones((2, 4)), jnp.ones((4, 3)), (((1,), (0,)), ((), ())))
  >>> y.shape, y.dtype
  ((2, 3), dtype('float32'))

References:
  Micikevicius et al., "FP8 Formats for Deep Learning", 2022 (arXiv:2209.05433).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from altgrad_jax.formats import FloatFormat, get_format
from altgrad_jax.quant.quantize import divide_by_scale
from altgrad_jax.quant.scaling import tensor_scale

NATIVE_DTYPES = {"E4M3": jnp.float8_e4m3fn, "E5M2": jnp.float8_e5m2}


def native_dtype(fmt: FloatFormat | str):
    """The XLA dtype of a format with a native FP8 GEMM, or ValueError naming the valid ones."""
    fmt = get_format(fmt)
    if fmt.name not in NATIVE_DTYPES:
        raise ValueError(f"format {fmt.name} has no native FP8 GEMM; use one of "
                         f"{sorted(NATIVE_DTYPES)} or the simulated QuantizedDotGeneral")
    return NATIVE_DTYPES[fmt.name]


def is_native(fmt: FloatFormat | str | None) -> bool:
    """Whether ``fmt`` can be fed natively (E4M3 / E5M2)."""
    return fmt is not None and get_format(fmt).name in NATIVE_DTYPES


def to_fp8(x: jax.Array, fmt: FloatFormat, *, margin: int = 0) -> tuple[jax.Array, jax.Array]:
    """``(f8(clip(x / s, +-max)), s)`` with ``s = tensor_scale(x, fmt, margin=margin)``."""
    scale = jax.lax.stop_gradient(tensor_scale(x, fmt, margin=margin))
    y = divide_by_scale(x.astype(jnp.float32), scale)
    y = jnp.clip(y, -fmt.max, fmt.max)  # the 'fn' casts turn overflow into NaN: saturate first
    return y.astype(native_dtype(fmt)), scale


def _dot(a, b, dims):
    return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


_FWD = lambda nd: (((nd - 1,), (0,)), ((), ()))  # noqa: E731  x[..., K] . w[K, N]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _fp8_matmul(x, w, x_fmt, w_fmt, g_fmt, margin):
    x8, sx = to_fp8(x, x_fmt, margin=margin)
    w8, sw = to_fp8(w, w_fmt)
    return _dot(x8, w8, _FWD(x.ndim)) * sx * sw


def _fwd(x, w, x_fmt, w_fmt, g_fmt, margin):
    x8, sx = to_fp8(x, x_fmt, margin=margin)
    w8, sw = to_fp8(w, w_fmt)
    return _dot(x8, w8, _FWD(x.ndim)) * sx * sw, (x8, sx, w8, sw)


def _bwd(x_fmt, w_fmt, g_fmt, margin, res, g):
    x8, sx, w8, sw = res
    k, n = w8.shape
    if g_fmt is not None:
        g8, sg = to_fp8(g, g_fmt, margin=margin)
    else:  # float32 cotangent against the dequantized 8-bit operands
        g8, sg = g.astype(jnp.float32), jnp.float32(1.0)
        x8, w8 = x8.astype(jnp.float32), w8.astype(jnp.float32)
    dx = _dot(g8, w8, (((g8.ndim - 1,), (1,)), ((), ()))) * sg * sw
    dw = _dot(x8.reshape(-1, k), g8.reshape(-1, n), (((0,), (0,)), ((), ()))) * sx * sg
    return dx, dw


_fp8_matmul.defvjp(_fwd, _bwd)


@dataclasses.dataclass(frozen=True, kw_only=True)
class NativeFP8DotGeneral:
    """``lax.dot_general`` on native FP8 operands (drop-in for `QuantizedDotGeneral`).

    Attributes:
      weight: format of the kernel: "E4M3" or "E5M2".
      activation: format of the layer input: "E4M3" or "E5M2".
      gradient: format of the output cotangent ("E5M2" / "E4M3"), or None (float32 cotangent).
      margin: extra headroom (whole binades) of the activation and gradient scales.
    """

    weight: FloatFormat | str = "E4M3"
    activation: FloatFormat | str = "E4M3"
    gradient: FloatFormat | str | None = "E5M2"
    margin: int = 0

    def __post_init__(self):
        for name in ("weight", "activation", "gradient"):
            value = getattr(self, name)
            if value is None and name != "gradient":
                raise ValueError(f"NativeFP8DotGeneral needs a {name} format (E4M3 or E5M2); "
                                 "an unquantized operand uses the simulated QuantizedDotGeneral")
            if value is not None:
                native_dtype(value)  # raises for formats without a native dtype
                object.__setattr__(self, name, get_format(value))
        if isinstance(self.margin, bool) or not isinstance(self.margin, int):
            raise ValueError(f"margin must be a whole number of binades, got {self.margin!r}")

    def __call__(self, lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None,
                 **kwargs):
        del precision, kwargs  # an FP8 GEMM has one precision; it accumulates in float32
        if rhs.ndim != 2 or tuple(map(tuple, dimension_numbers[0])) != ((lhs.ndim - 1,), (0,)) \
                or any(dimension_numbers[1]):
            raise ValueError("NativeFP8DotGeneral supports the dense contraction x[..., K] . "
                             f"w[K, N] only, got dimension_numbers={dimension_numbers}")
        out = _fp8_matmul(lhs, rhs, self.activation, self.weight, self.gradient, self.margin)
        return out if preferred_element_type is None else out.astype(preferred_element_type)
