"""BF16 weights, AdamW (16-bit reference) on EURLEX57K top-100 concepts (2-layer d=128 encoder).

Command:
  ALTGRAD_DATA_DIR=/path/to/eurlex57k python launch.py --config=configs/bf16_adamw.py
Expected: not yet measured with this config (the BF16 scale fix of issue 9 item 1 and the float32
embedding default came after every BF16 run). Reference: FP32 AdamW, same model, length 256,
1,220 steps, reached 0.747 test micro-F1 (DESIGN.md section 5, configs/default.py).
Without a data directory it falls back to the synthetic corpus, loudly.
"""

from configs import default


def get_config():
    c = default.get_config()
    c.name = "bf16_adamw"
    c.quant.weight_format = "BF16"
    c.optimizer.name = "adamw"
    c.optimizer.precondition = "gradient"
    return c
