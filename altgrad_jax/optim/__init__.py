"""Optimizers as composable Optax transforms: ManifoldAdamW, the grid optimizer, diagnostics.

* `manifold_adamw`: AdamW with a grid-aware preconditioner (``precondition="gradient" | "update"
  | "none"``), built from `scale_by_stiffness` / `scale_by_ulp` and Optax's own links.
* `grid_optimizer`: SGD-momentum whose weights live only on their format's grid (rung moves).
* `snap_to_grid`: last link that keeps any optimizer's weights on the grid.
* `with_grid_diagnostics` and `metrics`: opt-in flips, stalls, bit position kept in the optimizer
  state (the optimizers themselves are the bare algorithms).
* `make_optimizer`: the optimizer and schedule named by an ``ml_collections`` config.
"""

from altgrad_jax.optim.calibration import (CalibrationState, calibration_table,
                                           scale_by_calibration)
from altgrad_jax.optim.diagnostics import GridDiagnosticsState, metrics, with_grid_diagnostics
from altgrad_jax.optim.factory import OPTIMIZERS, SCHEDULES, make_optimizer, make_schedule
from altgrad_jax.optim.factory import DECAY_MASKS, LR_UNITS, PRECONDITIONS, decay_mask
from altgrad_jax.optim.grid import (GridOptimizerState, SnapToGridState, grid_optimizer,
                                    grid_scale, move_rungs, snap_to_grid)
from altgrad_jax.optim.manifold_adamw import (PRECONDITION_MODES, manifold_adamw,
                                              manifold_adamw_core)
from altgrad_jax.optim.stiffness import ScaleByStiffnessState, scale_by_stiffness, stiffness
from altgrad_jax.optim.tensor_spacing import scale_by_tensor_spacing
from altgrad_jax.optim.ulp_scaling import ScaleByUlpState, grid_spacing, scale_by_ulp
from altgrad_jax.quant import index_value, rung_index

__all__ = [
    "manifold_adamw", "manifold_adamw_core", "PRECONDITION_MODES", "scale_by_stiffness",
    "ScaleByStiffnessState", "stiffness", "scale_by_ulp", "ScaleByUlpState", "grid_spacing",
    "grid_optimizer", "GridOptimizerState", "grid_scale", "snap_to_grid", "SnapToGridState",
    "rung_index", "index_value", "move_rungs", "with_grid_diagnostics", "GridDiagnosticsState", "metrics",
    "make_optimizer", "make_schedule", "OPTIMIZERS", "SCHEDULES",
    "scale_by_calibration", "CalibrationState", "calibration_table", "scale_by_tensor_spacing",
    "decay_mask", "DECAY_MASKS", "LR_UNITS", "PRECONDITIONS",
]
