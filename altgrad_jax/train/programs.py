"""The compiled programs of one quantization policy: model, optimizer, train / diagnostics / eval
steps and the FP32 shadow. Built again after a format fallback.

Every step is jitted with the shardings of `altgrad_jax.parallel`: the train state as placed by
`parallel.place_state` (replicated, or FSDP-split with ``mesh.fsdp``) in and out, the batch split
over the mesh's ``data`` axis, metrics replicated. The evaluation step takes the params as placed
and a replicated batch (every device computes the whole eval batch: simple, correct on any device
count and on several processes). On a one-device mesh these are the plain ``jax.jit`` programs.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax

from altgrad_jax import diagnostics as diag_lib
from altgrad_jax import parallel
from altgrad_jax.models import QuantPolicy
from altgrad_jax.quant import format_or_none
from altgrad_jax.train.builders import build_model, build_optimizer
from altgrad_jax.train.losses import sigmoid_bce
from altgrad_jax.train.step import StepOptions, diag_step, eval_step, train_step


class TimedProgram:
    """A step jitted and compiled ahead of time on first use; the compile time goes to ``timer``.

    ``make(state)`` returns the jitted step for the shardings of ``state`` (the first argument of
    the first call), so the programs can be built before the first state exists.
    """

    def __init__(self, make, timer):
        self.make, self.timer, self._compiled = make, timer, None

    def __call__(self, *args):
        if self._compiled is None:
            t0 = time.perf_counter()
            self._compiled = self.make(args[0]).lower(*args).compile()
            if self.timer is not None:
                self.timer.compile_s += time.perf_counter() - t0
        return self._compiled(*args)


class _EvalProgram:
    """The eval step jitted on first use: params as placed, the batch and outputs replicated."""

    def __init__(self, step, mesh):
        self.step, self.mesh, self._jitted = step, mesh, None

    def __call__(self, params, batch):
        if self._jitted is None:
            rep = parallel.replicated(self.mesh)
            self._jitted = jax.jit(self.step, out_shardings=rep, in_shardings=(
                jax.tree.map(lambda x: x.sharding, params), rep))
        return self._jitted(params, batch)


@dataclasses.dataclass
class Programs:
    model: Any
    tx: Any
    train_step: Any
    diag_step: Any
    eval_step: Any
    shadow_fn: Any
    train_fn: Any = None  # the pure (unjitted) steps, for vmapped seed groups
    diag_fn: Any = None


def _shadow(config, model, fp32_model):
    """FP32 shadow: the same batch through an unquantized copy of the model."""
    if int(config.diag.shadow_every) <= 0:
        return None
    pw = float(config.train.pos_weight)

    def loss(m):
        return lambda p, b: sigmoid_bce(m.apply({"params": p}, b["input_ids"]), b["labels"],
                                        pos_weight=pw)
    return diag_lib.make_fp32_shadow_fn(loss(model), loss(fp32_model))


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where the run lives: the mesh and how the train state is split over it."""

    mesh: Any
    fsdp: bool = False
    fsdp_min_size: int = 1024

    def state_shardings(self, state):
        return parallel.state_shardings(state, self.mesh, fsdp=self.fsdp,
                                        fsdp_min_size=self.fsdp_min_size)

    def place(self, state):
        return jax.device_put(state, self.state_shardings(state))

    def abstract(self, state):
        return parallel.abstract_state(state, self.mesh, fsdp=self.fsdp,
                                       fsdp_min_size=self.fsdp_min_size)

    def jit_step(self, step):
        """``make(state)`` for `TimedProgram`: ``step`` jitted with the shardings of ``state``."""
        return lambda state: parallel.jit_sharded_step(step, state, self.mesh, fsdp=self.fsdp,
                                                       fsdp_min_size=self.fsdp_min_size)


def build_programs(config, policy, bundle, options: StepOptions, timer=None, *,
                   placement: Placement) -> Programs:
    """Model, optimizer and compiled steps for ``policy``, sharded as ``placement``."""
    kw = dict(vocab_size=bundle.tokenizer.get_vocab_size(), num_labels=bundle.num_labels)
    model = build_model(config, policy=policy, **kw)
    tx, lr_schedule = build_optimizer(config, policy.weights.lookup, int(config.train.num_steps))
    common = dict(model=model, tx=tx, lr_schedule=lr_schedule, options=options)
    train = functools.partial(train_step, **common)
    intended_tx = None  # regime (b): stalls are counted on the update before the snap
    if bool(config.optimizer.weights_on_grid) and str(config.optimizer.name) != "grid":
        intended_tx, _ = build_optimizer(config, policy.weights.lookup,
                                         int(config.train.num_steps), snap=False)
    diag = functools.partial(diag_step, **common, format_fn=policy.weights.lookup,
                             grad_format=format_or_none(config.quant.gradients),
                             intended_tx=intended_tx)
    evaluate = functools.partial(eval_step, model=model, pos_weight=float(config.train.pos_weight))
    fp32_model = build_model(config, policy=QuantPolicy(), **kw)
    return Programs(model=model, tx=tx,
                    train_step=TimedProgram(placement.jit_step(train), timer),
                    diag_step=TimedProgram(placement.jit_step(diag), timer),
                    eval_step=_EvalProgram(evaluate, placement.mesh),
                    shadow_fn=_shadow(config, model, fp32_model), train_fn=train, diag_fn=diag)
