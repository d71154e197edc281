"""Weights stored only on the E4M3 grid: the grid optimizer (no float32 master copy).

Command:
  ALTGRAD_DATA_DIR=/path/to/eurlex57k python launch.py --config=configs/grid_e4m3.py
The E4M3 kernels move by whole rungs (SGD with momentum, rate grid_learning_rate, stochastic rung
rounding), undecayed; the float32 leaves (head, biases, LayerNorm, the float32 embedding table)
get AdamW at learning_rate with its decoupled weight_decay.
Expected: not yet measured with this config. (A different regime-(b) arm, AdamW rounded to nearest
onto E4M3 after every update, length 256, 1,220 steps, measured 0.667 test micro-F1 against FP32's
0.747; DESIGN.md section 5.)
"""

from configs import default


def get_config():
    c = default.get_config()
    c.name = "grid_e4m3"
    c.quant.weight_format = "E4M3"
    c.optimizer.name = "grid"
    c.optimizer.learning_rate = 1e-3  # AdamW rate of the float32 leaves (the AdamW preset's)
    c.optimizer.grid_learning_rate = 1.0  # SGD rate of the E4M3 leaves: a step of 1.0 * velocity
    #                                       (parameter units) before rounding to whole rungs
    c.optimizer.grid_weight_decay = 0.0  # no decay of the E4M3 leaves (it would act at the grid
    #                                     rate); the float32 leaves keep AdamW's weight_decay
    c.optimizer.rounding = "stochastic"
    return c
