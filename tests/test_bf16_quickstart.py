"""Issue 9 item 1, end to end: the BF16 row trains like FP32 (before the scale fix it trained a dead
network: ``amax / 3.39e38`` flushed to a zero scale and every BF16 weight quantized to 0)."""

import pytest

from altgrad_jax.train.loop import train_and_evaluate

pytestmark = pytest.mark.standard_promotion


def _quickstart(fmt: str, embedding: str):
    from configs import bf16_adamw, quickstart

    c = quickstart.get_config()
    ref = bf16_adamw.get_config()
    c.quant.weight_format = fmt
    c.quant.embedding_format = embedding
    c.optimizer.name = ref.optimizer.name
    # Shorter than the quick start's 300 steps to keep the suite fast; F1 is already ~0.85 here.
    c.train.num_steps = 150
    c.train.eval_every = 0
    c.train.checkpoint_every = 0
    c.diag.rank_every = 0
    c.diag.every = 0
    c.train.progress_bar = False
    return c


def test_bf16_adamw_on_quickstart_data_is_within_0p01_micro_f1_of_fp32(tmp_path):
    fp32 = train_and_evaluate(_quickstart("none", "none"), str(tmp_path / "fp32"))
    # The embedding table in BF16 too: every weight matrix of the model goes through the BF16 scale.
    bf16 = train_and_evaluate(_quickstart("BF16", "same"), str(tmp_path / "bf16"))
    f_fp32, f_bf16 = fp32["test"]["test/micro_f1"], bf16["test"]["test/micro_f1"]
    assert f_fp32 > 0.5  # the reference learned the task
    assert abs(f_bf16 - f_fp32) <= 0.01, (f_bf16, f_fp32)
