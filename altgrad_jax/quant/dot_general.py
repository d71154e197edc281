"""A quantizing ``dot_general`` for Flax's ``dot_general=`` hook.

``QuantizedDotGeneral(weight=..., activation=..., gradient=...)`` is a frozen, hashable callable
with `jax.lax.dot_general`'s signature. In the forward pass it fake-quantizes the left operand
(activations) and the right operand (the kernel) with per-tensor current (amax) scaling; in the
backward pass it fake-quantizes the output cotangent (e.g. E5M2 gradients) before the two
gradient matmuls. Each of the three formats may be None (that operand stays float32). The weight
and activation use the straight-through estimator, so float32 master weights receive the gradient
of the quantized forward pass.

Scales: every operand uses `altgrad_jax.quant.tensor_scale`, the library's one per-tensor recipe
(a power of two with the largest magnitude strictly below ``fmt.max * s``). The kernel always uses
it as is, so weights stored on their grid (`altgrad_jax.optim.snap_to_grid`,
`altgrad_jax.optim.grid_optimizer`) pass through the forward pass unchanged. ``margin`` (whole
binades) adds headroom to the activation and gradient scales only.

Example:
  >>> import flax.linen as nn
  >>> from altgrad_jax.formats import get_format
  >>> dg = QuantizedDotGeneral(weight=get_format("E4M3"), activation=get_format("E4M3"),
  ...                          gradient=get_format("E5M2"))
  >>> layer = nn.Dense(4, dot_general=dg)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp  # noqa: F401 (docstring examples)

from altgrad_jax.formats import FloatFormat, get_format
from altgrad_jax.quant.quantize import quantize
from altgrad_jax.quant.scaling import _check_binades, tensor_scale


def quantize_amax(x: jax.Array, fmt: FloatFormat | None, *, margin: int = 0,
                  ste: str = "identity") -> jax.Array:
    """``quantize(x, fmt, tensor_scale(x, fmt, margin=margin))``; identity when ``fmt`` is None.

    Example:
      >>> quantize_amax(jnp.array([0.3, -448.0]), get_format("E4M3")).tolist()
      [0.3125, -448.0]
    """
    if fmt is None:
        return x
    return quantize(x, fmt, tensor_scale(x, fmt, margin=margin), ste=ste)


def _make_grad_quantizer(fmt: FloatFormat, margin: int):
    @jax.custom_vjp
    def f(x):
        return x

    def fwd(x):
        return x, None

    def bwd(_, g):
        return (quantize_amax(g, fmt, margin=margin),)

    f.defvjp(fwd, bwd)
    return f


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantizedDotGeneral:
    """``lax.dot_general`` with fake-quantized operands and (optionally) output gradient.

    Attributes:
      weight: format of the right operand (the kernel), or None.
      activation: format of the left operand (the layer input), or None.
      gradient: format of the output cotangent in the backward pass, or None.
      margin: extra headroom in whole binades for the activation and gradient scales (the
        kernel always uses `tensor_scale` itself, so that stored grid weights stay exact).
    """

    weight: FloatFormat | None = None
    activation: FloatFormat | None = None
    gradient: FloatFormat | None = None
    margin: int = 0

    def __post_init__(self):
        object.__setattr__(self, "margin", _check_binades(self.margin))
        for name in ("weight", "activation", "gradient"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, get_format(value))

    @property
    def is_identity(self) -> bool:
        return self.weight is None and self.activation is None and self.gradient is None

    def __call__(self, lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None,
                 **kwargs):
        lhs = quantize_amax(lhs, self.activation, margin=self.margin)
        rhs = quantize_amax(rhs, self.weight)
        out = jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                                  preferred_element_type=preferred_element_type, **kwargs)
        if self.gradient is not None:
            out = _make_grad_quantizer(self.gradient, self.margin)(out)
        return out
