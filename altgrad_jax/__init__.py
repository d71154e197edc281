"""altgrad_jax: bit-exact low-precision formats, manifold-aware Optax optimizers, and a harness.

Subpackages:
  formats      FloatFormat, the registry (get_format / make_format), bit-level encode / decode
  quant        quantize (nearest / stochastic, STE), ulp, scaling, QuantizedDotGeneral, rules
  optim        manifold_adamw, grid_optimizer, snap_to_grid, make_optimizer, metrics
  models       the quantizable Flax encoder classifier
  diagnostics  flips/stalls, rank health, gradient statistics, quantization health, interventions
  data, train, io, analysis   (imported on first use: they pull in heavier dependencies)
"""

import importlib

from altgrad_jax import formats, quant  # noqa: F401

__version__ = "0.1.0"
_LAZY = ("optim", "models", "diagnostics", "data", "train", "io", "analysis")
__all__ = ["formats", "quant", *_LAZY, "__version__"]


def __getattr__(name):
    if name in _LAZY:
        module = importlib.import_module(f"altgrad_jax.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'altgrad_jax' has no attribute {name!r}")
