"""The compiled programs of one quantization policy: model, optimizer, train / diagnostics / eval
steps and the FP32 shadow. Built again after a format fallback."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from altgrad_jax import diagnostics as diag_lib
from altgrad_jax.models import QuantPolicy
from altgrad_jax.quant import format_or_none
from altgrad_jax.train.builders import build_model, build_optimizer
from altgrad_jax.train.losses import sigmoid_bce
from altgrad_jax.train.step import StepOptions, make_diag_step, make_eval_step, make_train_step


class TimedProgram:
    """A jitted step compiled ahead of time on first use; the compile time goes to ``timer``."""

    def __init__(self, jitted, timer):
        self.jitted, self.timer, self._compiled = jitted, timer, None

    def __call__(self, *args):
        if self._compiled is None:
            t0 = time.perf_counter()
            self._compiled = self.jitted.lower(*args).compile()
            if self.timer is not None:
                self.timer.compile_s += time.perf_counter() - t0
        return self._compiled(*args)


@dataclasses.dataclass
class Programs:
    model: Any
    tx: Any
    train_step: Any
    diag_step: Any
    eval_step: Any
    shadow_fn: Any


def _shadow(config, model, fp32_model):
    """FP32 shadow: the same batch through an unquantized copy of the model."""
    if int(config.diag.shadow_every) <= 0:
        return None
    pw = float(config.train.pos_weight)

    def loss(m):
        return lambda p, b: sigmoid_bce(m.apply({"params": p}, b["input_ids"]), b["labels"],
                                        pos_weight=pw)
    return diag_lib.make_fp32_shadow_fn(loss(model), loss(fp32_model))


def build_programs(config, policy, bundle, options: StepOptions, timer=None) -> Programs:
    """Model, optimizer and compiled steps for ``policy``."""
    kw = dict(vocab_size=bundle.tokenizer.get_vocab_size(), num_labels=bundle.num_labels)
    model = build_model(config, policy=policy, **kw)
    tx, lr_schedule = build_optimizer(config, policy.weights.lookup, int(config.train.num_steps))
    common = dict(model=model, tx=tx, lr_schedule=lr_schedule, options=options)
    train_step = make_train_step(**common)
    intended_tx = None  # regime (b): stalls are counted on the update before the snap
    if bool(config.optimizer.weights_on_grid) and str(config.optimizer.name) != "grid":
        intended_tx, _ = build_optimizer(config, policy.weights.lookup,
                                         int(config.train.num_steps), snap=False)
    diag_step = make_diag_step(**common, format_fn=policy.weights.lookup,
                               grad_format=format_or_none(config.quant.gradients),
                               intended_tx=intended_tx)
    fp32_model = build_model(config, policy=QuantPolicy(), **kw)
    return Programs(model=model, tx=tx, train_step=TimedProgram(train_step, timer),
                    diag_step=TimedProgram(diag_step, timer),
                    eval_step=make_eval_step(model, float(config.train.pos_weight)),
                    shadow_fn=_shadow(config, model, fp32_model))
