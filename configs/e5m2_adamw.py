"""E5M2 weights (float32 masters), AdamW on EURLEX57K top-100 concepts (2-layer d=128 encoder).

Command:
  ALTGRAD_DATA_DIR=/path/to/eurlex57k python launch.py --config=configs/e5m2_adamw.py
Expected: not yet measured with this config (embedding table in float32, the quant.embedding_format
default). A probe with the embedding also in E5M2 (length 256, 1,220 steps, seed 0) reached 0.746
test micro-F1 against FP32's 0.747 (DESIGN.md section 5).
Without a data directory it falls back to the synthetic corpus, loudly.
"""

from configs import default


def get_config():
    c = default.get_config()
    c.name = "e5m2_adamw"
    c.quant.weight_format = "E5M2"
    c.optimizer.name = "adamw"
    c.optimizer.precondition = "gradient"
    return c
