"""Fake quantization onto ExMy grids: rounding, ULPs, scaling, a quantizing dot_general, rules."""

from altgrad_jax.quant.dot_general import QuantizedDotGeneral, quantize_amax
from altgrad_jax.quant.grid_index import index_value, max_index, rung_index
from altgrad_jax.quant.native import NativeFP8DotGeneral, is_native, native_dtype
from altgrad_jax.quant.quantize import (IMPLEMENTATIONS, ROUNDING_MODES, STE_MODES, grid_key,
                                        quantize)
from altgrad_jax.quant.rules import (PrecisionRules, format_fn, format_or_none, format_tree,
                                     path_to_str)
from altgrad_jax.quant.scaling import (DelayedScalingState, abs_max, amax_scale, delayed_scale,
                                       init_delayed_scaling, is_scale_free, scale_exponent,
                                       scale_from_amax, tensor_scale, update_delayed_scaling)
from altgrad_jax.quant.spacing import median_spacing
from altgrad_jax.quant.storage import is_on_grid, store_on_grid
from altgrad_jax.quant.stats import quantization_stats
from altgrad_jax.quant.ulp import exp2_int, ulp

__all__ = [
    "quantize", "grid_key", "ROUNDING_MODES", "STE_MODES", "IMPLEMENTATIONS", "ulp", "exp2_int",
    "rung_index", "index_value", "max_index", "tensor_scale", "median_spacing", "store_on_grid", "is_on_grid", "is_scale_free", "scale_exponent", "amax_scale", "abs_max", "scale_from_amax", "DelayedScalingState", "init_delayed_scaling",
    "delayed_scale", "update_delayed_scaling", "quantization_stats", "QuantizedDotGeneral",
    "quantize_amax", "NativeFP8DotGeneral", "is_native", "native_dtype",
    "PrecisionRules", "format_fn", "format_or_none", "format_tree", "path_to_str",
]
