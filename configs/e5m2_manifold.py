"""E5M2 kernels (float32 masters), ManifoldAdamW with ULP-consistent updates (c = 1), EURLEX57K.

Command:
  ALTGRAD_DATA_DIR=/path/to/eurlex57k python launch.py --config=configs/e5m2_manifold.py
Expected: not yet measured with this config. (The legacy preset, lr 0.1 in E5M2 grid steps, measured
0.414 test micro-F1 at 500 steps (issue 14): an embedding stepping ~5x slower than AdamW's.)
Without a data directory it falls back to the synthetic corpus, loudly.
"""

from configs import default


def get_config():
    c = default.get_config()
    c.name = "e5m2_manifold"
    c.quant.weight_format = "E5M2"
    c.optimizer.name = "manifold_adamw"
    c.optimizer.precondition = "update"  # ULP-consistent: Adam direction x grid spacing
    c.optimizer.lr_units = "parameter"  # learning_rate AdamW-sized; per tensor c*lr/median spacing
    c.optimizer.learning_rate = 1e-3  # float32 leaves: AdamW at 1e-3
    c.optimizer.grid_step_multiplier = 1.0  # c = 1: the median step at init equals AdamW's
    c.optimizer.weight_decay = 0.01  # AdamW units (lr * wd of w per step), params with >= 2 dims
    return c
