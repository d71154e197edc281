"""Smoke test config (used by the test suite): a few steps of a tiny model on synthetic data.

Command:
  python launch.py --config=configs/smoke.py --workdir=/tmp/smoke
Expected: finishes in seconds; results.json with status "completed" (F1 is meaningless here).
"""

from configs import default


def get_config():
    c = default.get_config()
    c.name = "smoke"
    c.data.source = "synthetic"
    c.data.max_length = 16
    c.data.vocab_size = 200
    c.data.max_validation_docs = 0
    c.data.synthetic_num_train = 64
    c.data.synthetic_num_validation = 16
    c.data.synthetic_num_test = 16
    c.data.synthetic_num_labels = 5
    c.model.num_layers = 1
    c.model.d_model = 16
    c.model.num_heads = 2
    c.model.mlp_dim = 32
    c.model.dropout = 0.1
    c.quant.weight_format = "E5M2"
    c.train.batch_size = 8
    c.train.eval_batch_size = 8
    c.train.num_steps = 6
    c.train.log_every = 2
    c.train.eval_every = 4
    c.train.checkpoint_every = 2
    c.train.progress_bar = False
    c.diag.every = 3  # the diagnostics step at steps 3 and 6 (the plain step elsewhere)
    c.diag.stall_window = 2
    c.diag.rank_every = 3
    c.diag.rank_warmup_steps = 2
    c.diag.shadow_every = 3
    c.log.wandb_mode = "disabled"
    return c
