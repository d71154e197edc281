"""The loop's periodic actions: each one small object called after every step.

An action is ``action(run, step, metrics)`` where ``run`` is the loop's `Run` and ``metrics`` the
device metrics of the step just taken; it decides itself whether it is due. Only the
non-finite guard reads a value every step (one int32 scalar); everything else pulls to the host
only when due.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import numpy as np

from altgrad_jax import diagnostics as diag_lib


class TrainingDiverged(RuntimeError):
    """Raised (and reported without a traceback by launch.py) when NaN patience runs out."""


def _due(step: int, every: int, num_steps: int | None = None) -> bool:
    return (every > 0 and step % every == 0) or (num_steps is not None and step == num_steps)


def _host(metrics: dict) -> dict:
    return {k: float(v) for k, v in jax.device_get(metrics).items()}


class PerfTimer:
    """Training-only time: train steps (incl. diagnostics steps), no compile/eval/ckpt/rank/shadow;
    and the run's wall time (``wall_time_s``: every process's seconds from setup to results).

    Cumulative figures survive a resume through ``state_dict``: a run that stopped and resumed
    reports the sum over its processes (``processes`` of them), up to each one's last checkpoint
    (steps lost to an interruption after it are trained again and counted once). Checkpoints
    written before ``wall_s`` was saved restore 0 for it: such a run's wall time is its last
    process's only.
    """

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self.vmap_seeds = 1  # runs sharing each timed step (altgrad_jax.train.seeds)
        self.train_s = self.compile_s = self.wall_before = 0.0
        self.steps = self.tokens = 0
        self.processes = 1
        self._wall_start = time.time()
        self._w = [0.0, 0, 0]  # window: seconds, steps, tokens

    def load_state_dict(self, s: dict) -> None:
        """Adds a checkpoint's totals (a resume; this process's compile time stays counted)."""
        self.train_s += float(s.get("train_s", 0.0))
        self.compile_s += float(s.get("compile_s", 0.0))
        self.wall_before += float(s.get("wall_s", 0.0))
        self.steps += int(s.get("steps", 0))
        self.tokens += int(s.get("tokens", 0))
        self.processes += int(s.get("processes", 1))

    def add(self, seconds: float, tokens: int) -> None:
        self.train_s += seconds
        self.steps += 1
        self.tokens += tokens
        self._w = [self._w[0] + seconds, self._w[1] + 1, self._w[2] + tokens]

    def window(self) -> dict:
        dt, n, tok = self._w
        self._w = [0.0, 0, 0]
        dt = max(dt, 1e-9)
        return {"perf/steps_per_s": n / dt, "perf/samples_per_s": n * self.batch_size / dt,
                "perf/tokens_per_s": tok / dt}

    def wall_s(self) -> float:
        return self.wall_before + time.time() - self._wall_start

    def state_dict(self) -> dict:
        return {"train_s": self.train_s, "compile_s": self.compile_s, "steps": self.steps,
                "tokens": self.tokens, "wall_s": self.wall_s(), "processes": self.processes}

    def results(self) -> dict:
        t = max(self.train_s, 1e-9)
        return {"train_steps_per_s": self.steps / t,
                "train_samples_per_s": self.steps * self.batch_size / t,
                "train_tokens_per_s": self.tokens / t, "train_time_s": self.train_s,
                "compile_time_s": self.compile_s, "wall_time_s": self.wall_s(),
                "processes": self.processes, "vmap_seeds": self.vmap_seeds}


class NonfiniteGuard:
    """Every step: the anomaly checkpoint at the first non-finite step, and at the step a streak
    reaches ``train.nan_patience`` a format fallback (when configured) or `TrainingDiverged`."""

    def __init__(self, patience: int):
        self.patience = patience

    def __call__(self, run, step: int, metrics: dict) -> None:
        streak = int(run.state.nonfinite_streak)  # the one per-step host read
        if streak == 0:
            return
        if streak == 1 and int(run.state.first_nonfinite_step) == step - 1:
            run.ckpt.save_anomaly(step, run.state, extra=run.extra())
        if streak < self.patience:
            return
        if run.fallback is not None:
            event = run.fallback.check(step, nan_stop=True, windowed_stall=None)
            if event is not None:
                run.apply_fallback(step, event)
                return
        run.status = "diverged"
        raise TrainingDiverged(
            f"{streak} consecutive non-finite steps (patience {self.patience}); first at step "
            f"{int(run.state.first_nonfinite_step)}. See "
            f"{os.path.join(run.workdir, 'failure_report.md')}")


class LogAction:
    """Every ``train.log_every`` steps (and the last): train metrics, training-only throughput and
    one console line."""

    def __init__(self, every: int, num_steps: int, pending: list | None = None):
        self.every, self.num_steps = max(every, 1), num_steps
        self.losses: list = list(pending or [])

    def pending(self) -> list[float]:
        return [float(x) for x in jax.device_get(self.losses)]

    def __call__(self, run, step: int, metrics: dict) -> None:
        self.losses.append(metrics["train/loss"])
        if not _due(step, self.every, self.num_steps):
            return
        host = _host({k: v for k, v in metrics.items()
                      if k.startswith(("train/", "optim/", "stability/"))})
        losses = np.asarray(self.pending(), np.float64)
        ok = np.isfinite(losses)
        host["train/loss_avg"] = float(np.mean(losses[ok])) if ok.any() else float("nan")
        self.losses = []
        host.update(run.timer.window())
        run.writers.write(step, host)
        run.last_metrics.update(host)
        run.bar.update(0, loss=host["train/loss"], steps_per_s=host["perf/steps_per_s"])
        d = run.last_metrics
        run.console.line(f"step {step}/{self.num_steps}", loss=host["train/loss_avg"],
                         lr=host.get("train/lr"), steps_per_s=round(host["perf/steps_per_s"], 2),
                         stall=d.get("diag/windowed_stall_ratio"),
                         below_half_step=d.get("diag/below_half_step"))


class DiagAction:
    """After a diagnostics step (every ``diag.every``): write its figures and feed the stall
    fallback with the sampled windowed stall ratio."""

    def __init__(self, every: int):
        self.every = every

    def is_diag_step(self, step: int) -> bool:
        """Whether the step about to be taken (``step`` done so far) runs the diagnostics step."""
        return self.every > 0 and (step + 1) % self.every == 0

    def __call__(self, run, step: int, metrics: dict) -> None:
        if not (self.every > 0 and step % self.every == 0):
            return
        host = _host({k: v for k, v in metrics.items()
                      if k.startswith(("diag/", "grad/", "quant/"))})
        run.writers.write(step, host)
        run.last_metrics.update(host)
        if run.fallback is not None and host.get("diag/window_full", 0.0) > 0:
            event = run.fallback.check(step, nan_stop=False,
                                       windowed_stall=host.get("diag/windowed_stall_ratio"))
            if event is not None:
                run.apply_fallback(step, event)


class RankAction:
    """Every ``diag.rank_every`` steps: stable / effective rank of every matrix, trend warnings."""

    def __init__(self, every: int, rank_fn, detector):
        self.every, self.rank_fn, self.detector = every, rank_fn, detector

    def __call__(self, run, step: int, metrics: dict) -> None:
        if self.rank_fn is None or not _due(step, self.every):
            return
        t0 = time.perf_counter()
        rank = _host(self.rank_fn(run.state.params))
        warnings_ = self.detector.update(step, rank)
        rank.update(self.detector.metrics())
        for w in warnings_:
            run.append_event({"type": "rank_warning", **w})
        rank["rank/warnings"] = float(len(warnings_))
        rank["perf/rank_seconds"] = time.perf_counter() - t0
        run.writers.write(step, rank)
        run.last_metrics.update(rank)


class ShadowAction:
    """Every ``diag.shadow_every`` steps: the FP32 shadow of the step's batch."""

    def __init__(self, every: int):
        self.every = every

    def __call__(self, run, step: int, metrics: dict) -> None:
        if run.programs.shadow_fn is None or not _due(step, self.every):
            return
        run.writers.write(step, _host(run.programs.shadow_fn(run.state.params, run.batch)))


class EvalAction:
    """Every ``train.eval_every`` steps before the last: validation, the best checkpoint."""

    def __init__(self, every: int, num_steps: int):
        self.every, self.num_steps = every, num_steps

    def __call__(self, run, step: int, metrics: dict) -> None:
        if not _due(step, self.every) or step >= self.num_steps:
            return
        ev, _ = run.evaluate(run.state.params, "validation", "eval")
        run.writers.write(step, ev)
        run.console.line(f"eval step {step}", micro_f1=ev["eval/micro_f1"],
                         macro_f1=ev["eval/macro_f1"], loss=ev["eval/loss"])
        run.ckpt.save_best(step, run.state, run.extra(), ev["eval/micro_f1"])


class CheckpointAction:
    """Every ``train.checkpoint_every`` steps before the last: a periodic checkpoint."""

    def __init__(self, every: int, num_steps: int):
        self.every, self.num_steps = every, num_steps

    def __call__(self, run, step: int, metrics: dict) -> None:
        if _due(step, self.every) and step < self.num_steps:
            run.ckpt.save(step, run.state, extra=run.extra())


class StopAction:
    """``train.max_steps_this_run``: checkpoint and stop this invocation (rerun to resume)."""

    def __init__(self, max_steps: int, num_steps: int):
        self.max_steps, self.num_steps = max_steps, num_steps

    def __call__(self, run, step: int, metrics: dict) -> None:
        if self.max_steps > 0 and run.steps_this_run >= self.max_steps and step < self.num_steps:
            run.status = "interrupted"
            run.ckpt.save(step, run.state, extra=run.extra(), force=True)
            run.console.line(f"stopped after {run.steps_this_run} steps this run "
                             f"(train.max_steps_this_run); rerun the same command to resume "
                             f"from step {step}")


def rank_detector(config) -> Any:
    d = config.diag
    return diag_lib.RankTrendDetector(
        warmup_steps=int(d.rank_warmup_steps), decay=float(d.rank_ema),
        critical_patterns=tuple(d.rank_critical_patterns),
        critical_threshold=float(d.rank_critical_drop), threshold=float(d.rank_drop))
