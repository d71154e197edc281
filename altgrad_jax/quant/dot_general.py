"""A quantizing ``dot_general`` for Flax's ``dot_general=`` hook.

``QuantizedDotGeneral(weight=..., activation=..., gradient=...)`` is a frozen, hashable callable
with `jax.lax.dot_general`'s signature. In the forward pass it fake-quantizes the left operand
(activations) and the right operand (the kernel) with per-tensor current (amax) scaling; in the
backward pass it fake-quantizes the output cotangent (e.g. E5M2 gradients) before the two
gradient matmuls. Each of the three formats may be None (that operand stays float32). The weight
and activation use the straight-through estimator, so float32 master weights receive the gradient
of the quantized forward pass.

Example:
  >>> import flax.linen as nn
  >>> dg = QuantizedDotGeneral(weight=get_format("E4M3"), activation=get_format("E4M3"),
  ...                          gradient=get_format("E5M2"))
  >>> layer = nn.Dense(4, dot_general=dg)
"""

from __future__ import annotations

import dataclasses

import jax

from altgrad_jax.formats import FloatFormat, get_format
from altgrad_jax.quant.quantize import quantize
from altgrad_jax.quant.scaling import amax_scale


def quantize_amax(x: jax.Array, fmt: FloatFormat | None, *, margin: float = 0.0,
                  pow2: bool = False, ste: str = "identity") -> jax.Array:
    """Fake-quantizes ``x`` with per-tensor current scaling; identity when ``fmt`` is None."""
    if fmt is None:
        return x
    return quantize(x, fmt, amax_scale(x, fmt, margin=margin, pow2=pow2), ste=ste)


def _make_grad_quantizer(fmt: FloatFormat, margin: float, pow2: bool):
    @jax.custom_vjp
    def f(x):
        return x

    def fwd(x):
        return x, None

    def bwd(_, g):
        return (quantize_amax(g, fmt, margin=margin, pow2=pow2),)

    f.defvjp(fwd, bwd)
    return f


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantizedDotGeneral:
    """``lax.dot_general`` with fake-quantized operands and (optionally) output gradient.

    Attributes:
      weight: format of the right operand (the kernel), or None.
      activation: format of the left operand (the layer input), or None.
      gradient: format of the output cotangent in the backward pass, or None.
      margin: scaling headroom in binades for all three.
      pow2: power-of-two scales.
    """

    weight: FloatFormat | None = None
    activation: FloatFormat | None = None
    gradient: FloatFormat | None = None
    margin: float = 0.0
    pow2: bool = False

    def __post_init__(self):
        for name in ("weight", "activation", "gradient"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, get_format(value))

    @property
    def is_identity(self) -> bool:
        return self.weight is None and self.activation is None and self.gradient is None

    def __call__(self, lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None,
                 **kwargs):
        lhs = quantize_amax(lhs, self.activation, margin=self.margin, pow2=self.pow2)
        rhs = quantize_amax(rhs, self.weight, margin=self.margin, pow2=self.pow2)
        out = jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                                  preferred_element_type=preferred_element_type, **kwargs)
        if self.gradient is not None:
            out = _make_grad_quantizer(self.gradient, self.margin, self.pow2)(out)
        return out
