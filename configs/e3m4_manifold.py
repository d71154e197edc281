"""E3M4 (bias 1) weights, ManifoldAdamW with ULP-consistent updates on EURLEX57K top-100 concepts (2-layer d=128 encoder).

Command:
  ALTGRAD_DATA_DIR=/path/to/eurlex57k python launch.py --config=configs/e3m4_manifold.py
Expected (2 CPU cores): ~0.7 s/step, 1,220 steps (~15 min); validation micro-F1 in the 0.70-0.75
range (the FP32 AdamW calibration run reached 0.747 test micro-F1; see DESIGN.md section 5).
Without a data directory it falls back to the synthetic corpus, loudly.
"""

from configs import default


def get_config():
    c = default.get_config()
    c.name = "e3m4_manifold"
    c.quant.weight_format = "E3M4"
    c.optimizer.name = "manifold_adamw"
    c.optimizer.precondition = "update"  # ULP-consistent: step = lr grid steps x Adam direction
    c.optimizer.learning_rate = 0.25  # in grid steps of E3M4 (about 2% of |w| per step at peak)
    c.optimizer.unformatted_scale = 0.004  # float32 leaves get AdamW at lr * 0.004 = 1e-3
    c.optimizer.weight_decay = 4e-05  # lr * wd = 1e-5 of w per step, as AdamW 1e-3 x 1e-2
    return c
