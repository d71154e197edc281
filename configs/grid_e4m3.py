"""Weights stored only on the E4M3 grid: the grid optimizer (no float32 master copy).

Command:
  ALTGRAD_DATA_DIR=/path/to/eurlex57k python launch.py --config=configs/grid_e4m3.py
Expected: learns, but below AdamW with float32 masters: stalls dominate (watch
diag/stall_ratio_window); DESIGN.md section 5 measured 0.667 test micro-F1 for AdamW rounding onto
E4M3 after every update.
"""

from configs import default


def get_config():
    c = default.get_config()
    c.name = "grid_e4m3"
    c.quant.weight_format = "E4M3"
    c.optimizer.name = "grid"
    c.optimizer.learning_rate = 1.0  # in grid rungs per unit velocity (see altgrad_jax.optim.grid)
    c.optimizer.weight_decay = 0.0
    c.optimizer.rounding = "stochastic"
    return c
