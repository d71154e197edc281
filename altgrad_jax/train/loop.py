"""`train_and_evaluate(config, workdir)`: the whole run, resumable, with a self-describing folder.

The run reads as its phases (the Flax examples' shape)::

    train_and_evaluate
      completed run?  -> say so, write nothing, return its results
      _setup          -> run folder, logs, data, model/optimizer programs, fresh state, writers
      _restore        -> newest readable checkpoint: state, data order, timers, detectors, fallback
      _train          -> the step loop; after each step the periodic actions (train/periodic.py):
                         non-finite guard, log, diagnostics, rank health, FP32 shadow, eval,
                         checkpoint, stop-for-now
      _finish         -> final evaluation, threshold tuning, results.json (or the failure path)

Run folder layout (``workdir``)::

    config.json            the full config, written before step 0 (a resume checks it is unchanged)
    log.txt                library logs (orbax, absl, XLA); the terminal shows only the run's lines
    data_info.json         dataset name (eurlex57k / synthetic), sizes, label set, truncation rate
    label_vocab.json       label ids in column order (from the train split)
    tokenizer.json         the WordPiece tokenizer (reused on resume / evaluation)
    metrics.jsonl          one line per logged step ("step" explicit, never duplicated on resume)
    checkpoints/ best/ anomaly/   Orbax checkpoints (periodic N latest, best by eval/micro_f1,
                           the state at the first non-finite step)
    results.json           final validation/test metrics, training-only throughput, status
    failure_report.md      only when the run stopped on non-finite steps
    events.jsonl           interventions (format fallbacks, rank warnings), one JSON per line

Devices: the run lives on ``parallel.make_mesh(config.mesh)`` (one ``data`` axis; one device = a
1-device mesh, the same code path): the state placed replicated or FSDP-split (``mesh.fsdp``), each
training batch split over ``data`` (on several processes each feeds its own rows), checkpoints
saved by every process (Orbax coordinates) and restored into the current mesh's shardings; only
process 0 writes metrics.jsonl, W&B, the console, events and results.json.

Re-running the same command on the same folder resumes from the newest readable checkpoint and
continues exactly (same data order, same dropout keys, same format fallbacks, same metrics as an
uninterrupted run); on a completed run it says so and writes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from altgrad_jax import data as data_lib
from altgrad_jax import diagnostics as diag_lib
from altgrad_jax import io as io_lib
from altgrad_jax import parallel
from altgrad_jax.train import periodic
from altgrad_jax.train.builders import build_model, build_optimizer, build_policy
from altgrad_jax.train.periodic import TrainingDiverged
from altgrad_jax.train.programs import Placement, Programs, build_programs
from altgrad_jax.train.results import (check_config_unchanged, completed_results, evaluate,
                                       final_results, write_json)
from altgrad_jax.train.state import TrainState
from altgrad_jax.train.step import StepOptions, init_diag_state

__all__ = ["train_and_evaluate", "TrainingDiverged", "default_workdir", "build_model",
           "build_optimizer", "build_policy"]


def default_workdir(config: ml_collections.ConfigDict) -> str:
    return os.path.join("runs", str(config.name))


@dataclasses.dataclass
class Run:
    """Everything the phases share (mutable: the step loop advances it)."""

    config: ml_collections.ConfigDict
    workdir: str
    bundle: Any
    options: StepOptions
    policy: Any
    programs: Programs
    state: TrainState
    train_iter: Any
    ckpt: io_lib.Checkpointer
    fallback: Any
    console: io_lib.Console
    undo_logs: Any
    placement: Any = None
    writers: Any = None
    bar: Any = None
    timer: Any = None
    actions: list = dataclasses.field(default_factory=list)
    start_step: int = 0
    step: int = 0
    steps_this_run: int = 0
    batch: Any = None
    status: str = "completed"
    last_metrics: dict = dataclasses.field(default_factory=dict)
    num_params: int = 0

    @property
    def num_steps(self) -> int:
        return int(self.config.train.num_steps)

    def extra(self) -> dict:
        """The host-side state a checkpoint carries beside the `TrainState`."""
        return {"data_iter": self.train_iter.state(), "perf": self.timer.state_dict(),
                "rank_detector": self.actions_by_type(periodic.RankAction).detector.state_dict(),
                "pending_losses": self.actions_by_type(periodic.LogAction).pending(),
                "fallback": None if self.fallback is None else self.fallback.state_dict()}

    def actions_by_type(self, kind):
        return next(a for a in self.actions if isinstance(a, kind))

    def evaluate(self, params, split: str, prefix: str, threshold=0.5):
        dataset = getattr(self.bundle, split)
        return evaluate(self.programs.eval_step, params, dataset,
                        int(self.config.train.eval_batch_size), prefix, threshold)

    def append_event(self, event: dict) -> None:
        if not parallel.is_main_process():
            return
        with open(os.path.join(self.workdir, "events.jsonl"), "a") as f:
            f.write(json.dumps(io_lib.to_json_compatible(event)) + "\n")

    def apply_fallback(self, step: int, event) -> None:
        """Switch format: new rules, programs, optimizer state, windows and streak."""
        self.policy = _policy_after(self.policy, [event])
        self.programs = build_programs(self.config, self.policy, self.bundle, self.options,
                                       self.timer, placement=self.placement)
        self.state = self.placement.place(self.state.replace(
            opt_state=self.programs.tx.init(self.state.params),
            diag=init_diag_state(self.options, int(self.config.diag.stall_window)),
            nonfinite_streak=jnp.zeros((), jnp.int32)))
        record = {"type": "format_fallback", **event.to_dict()}
        self.append_event(record)
        if parallel.is_main_process():
            write_json(os.path.join(self.workdir, "fallback.json"), self.fallback.state_dict())
        self.writers.write(step, {"stability/fallback_events": float(len(self.fallback.events))})
        self.console.line(f"format fallback at step {step}",
                          formats=f"{event.from_format} -> {event.to_format or 'float32'}",
                          reason=event.reason)


def _policy_after(policy, events):
    for ev in events:
        policy = dataclasses.replace(policy, weights=diag_lib.apply_fallback_to_rules(
            policy.weights, ev.from_format, ev.to_format))
    return policy


def _step_options(config) -> StepOptions:
    return StepOptions(pos_weight=float(config.train.pos_weight),
                       skip_nonfinite=bool(config.train.skip_nonfinite),
                       flips=bool(config.diag.flips), grad_stats=bool(config.diag.grad_stats),
                       quant_health=bool(config.diag.quant_health),
                       dead_threshold=float(config.diag.dead_threshold))


def _make_fallback(config, policy, workdir: str, latest_step: int | None):
    """The fallback controller and the policy the newest checkpoint was trained with."""
    if not (config.stability.fallback and policy.weights.default is not None):
        return None, policy
    d = config.diag
    fallback = diag_lib.FallbackController(
        str(config.quant.weight_format),
        stall_threshold=float(config.stability.fallback_stall_threshold),
        window=int(d.stall_window) * max(int(d.every), 1),
        min_step=max(int(config.stability.fallback_min_step), 1))
    path = os.path.join(workdir, "fallback.json")
    if latest_step is not None and os.path.exists(path):
        with open(path) as f:  # only events the checkpoint had seen (exact replay after a crash)
            events = [e for e in json.load(f)["events"] if int(e["step"]) <= latest_step]
        policy = _policy_after(policy, [diag_lib.FallbackEvent(**e) for e in events])
    return fallback, policy


class _Silent:
    """Console, writers and progress bar of a process other than 0: they write nothing."""

    bar = None

    def line(self, *args, **kwargs) -> None:
        pass

    def write(self, step, metrics) -> None:
        pass

    def update(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


def _placement(config) -> Placement:
    """The mesh of ``config.mesh``; the batch must split over it (one-line errors otherwise)."""
    m = config.mesh
    mesh = parallel.make_mesh(m)
    n, b = int(mesh.devices.size), int(config.train.batch_size)
    if b % n:
        raise ValueError(f"train.batch_size={b} does not split over the {n} devices of the data "
                         f"axis; choose a multiple of {n} or set mesh.data")
    return Placement(mesh, fsdp=bool(m.fsdp), fsdp_min_size=int(m.fsdp_min_size))


def _setup(config, workdir: str) -> Run:
    """Run folder, log routing, data, programs and a fresh state (phase 1)."""
    os.makedirs(workdir, exist_ok=True)
    timer = periodic.PerfTimer(int(config.train.batch_size))  # the run's wall clock starts here
    # Route library logs first: the first device query prints XLA's backend probing at INFO.
    undo_logs = io_lib.route_library_logs(workdir, verbose=bool(config.log.verbose))
    try:
        placement = _placement(config)
    except ValueError:
        undo_logs()
        raise
    main = parallel.is_main_process()
    console = io_lib.Console() if main else _Silent()
    config_dict = config.to_dict()
    ckpt = io_lib.Checkpointer(workdir, max_to_keep=int(config.train.keep_checkpoints),
                               best_metric="eval/micro_f1")
    latest = ckpt.latest_step()
    config_path = os.path.join(workdir, "config.json")
    if latest is not None and os.path.exists(config_path):
        check_config_unchanged(config_path, config_dict)
    if main:
        write_json(config_path, config_dict)
    console.line(f"run {config.name} in {workdir}")
    console.line(io_lib.short_config_line(config_dict))
    if int(config.train.num_steps) < 1:
        raise ValueError(f"train.num_steps must be >= 1, got {config.train.num_steps}")
    bundle = data_lib.build_data(config.data, workdir)
    console.line(io_lib.data_summary_line(bundle.info))
    options = _step_options(config)
    fallback, policy = _make_fallback(config, build_policy(config.quant), workdir, latest)
    programs = build_programs(config, policy, bundle, options, timer, placement=placement)
    init_key, dropout_key = jax.random.split(jax.random.key(int(config.train.seed)))
    dummy = jnp.zeros((1, config.data.max_length), jnp.int32)
    params = jax.jit(lambda k: programs.model.init(k, dummy)["params"])(init_key)
    state = TrainState.create(params=params, opt_state=programs.tx.init(params),
                              rng_key=dropout_key,
                              diag=init_diag_state(options, int(config.diag.stall_window)))
    state = placement.place(state)
    train_iter = data_lib.BatchIterator(bundle.train, int(config.train.batch_size),
                                        seed=int(config.data.seed))
    run = Run(config=config, workdir=workdir, bundle=bundle, options=options, policy=policy,
              programs=programs, state=state, train_iter=train_iter, ckpt=ckpt,
              fallback=fallback, console=console, undo_logs=undo_logs,
              timer=timer, placement=placement)
    run.num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    return run


def _restore(run: Run) -> None:
    """Newest readable checkpoint -> state, data order, timers, detectors, fallback (phase 2)."""
    cfg = run.config
    restored = run.ckpt.restore_latest(run.placement.abstract(run.state))
    extra: dict = {}
    if restored is not None:
        _, run.state, extra = restored
        run.train_iter.restore(extra["data_iter"])
    run.start_step = run.step = int(run.state.step)
    if "perf" in extra:
        run.timer.load_state_dict(extra["perf"])
    detector = periodic.rank_detector(cfg)
    if "rank_detector" in extra:
        detector.load_state_dict(extra["rank_detector"])
    if run.fallback is not None and extra.get("fallback"):
        run.fallback.load_state_dict(extra["fallback"])
    if restored is not None:
        _truncate_events(run.workdir, run.start_step)
        run.console.line(f"resumed from step {run.start_step}")
    d, t = cfg.diag, cfg.train
    rank_fn = (diag_lib.make_rank_health_fn(exclude=d.rank_exclude or None)
               if int(d.rank_every) > 0 else None)
    n = run.num_steps
    run.actions = [periodic.NonfiniteGuard(int(t.nan_patience)),
                   periodic.DiagAction(int(d.every)),
                   periodic.LogAction(int(t.log_every), n, extra.get("pending_losses")),
                   periodic.RankAction(int(d.rank_every), rank_fn, detector),
                   periodic.ShadowAction(int(d.shadow_every)),
                   periodic.EvalAction(int(t.eval_every), n),
                   periodic.CheckpointAction(int(t.checkpoint_every), n),
                   periodic.StopAction(int(t.max_steps_this_run), n)]
    if not parallel.is_main_process():
        run.writers = run.bar = _Silent()
        return
    run.writers = io_lib.make_writers(
        run.workdir, wandb_mode=cfg.log.wandb_mode, wandb_project=cfg.log.wandb_project,
        run_name=cfg.name, config=cfg.to_dict(),
        resume_step=run.start_step if restored is not None else None)
    run.bar = io_lib.ProgressBar(total=n, initial=run.start_step,
                                 disable=None if cfg.train.progress_bar else True)
    run.console.bar = run.bar


def _truncate_events(workdir: str, step: int) -> None:
    """Drops events logged after the restored step (they will happen again)."""
    path = os.path.join(workdir, "events.jsonl")
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [ln for ln in f if ln.strip() and int(json.loads(ln).get("step", 0)) <= step]
    with open(path, "w") as f:
        f.writelines(lines)


def _one_step(run: Run) -> dict:
    """Takes one step (the diagnostics step when due), timed as training time."""
    t0 = time.perf_counter()
    compile_before = run.timer.compile_s
    np_batch = next(run.train_iter)  # the global batch (same order on every process)
    run.batch = parallel.shard_batch(parallel.process_local(np_batch), run.placement.mesh)
    diag_due = run.actions_by_type(periodic.DiagAction).is_diag_step(run.step)
    program = run.programs.diag_step if diag_due else run.programs.train_step
    run.state, metrics = program(run.state, run.batch)
    run.state.nonfinite_streak.block_until_ready()
    seconds = time.perf_counter() - t0 - (run.timer.compile_s - compile_before)
    run.timer.add(seconds, int((np_batch["input_ids"] != 0).sum()))
    run.step += 1
    run.steps_this_run += 1
    run.bar.update(1)
    return metrics


def _train(run: Run) -> None:
    """The step loop: one step, then every periodic action (phase 3)."""
    while run.step < run.num_steps and run.status == "completed":
        metrics = _one_step(run)
        for action in run.actions:
            action(run, run.step, metrics)


def train_alone(run: Run) -> None:
    """`_train`, with a divergence finished as a diverged run instead of raised (seed groups)."""
    if run.status != "completed":
        return
    try:
        _train(run)
    except TrainingDiverged as e:
        _finish_diverged(run, e)


def _close(run: Run) -> None:
    for part in (run.bar, run.writers, run.ckpt):
        if part is not None:
            part.close()
    run.undo_logs()


def _finish_diverged(run: Run, error: Exception) -> None:
    cfg = run.config
    run.ckpt.save(run.step, run.state, extra=run.extra(), force=True)
    if not parallel.is_main_process():
        return
    diag_lib.write_failure_report(
        os.path.join(run.workdir, "failure_report.md"),
        format_name=str(run.fallback.current if run.fallback is not None
                        else cfg.quant.weight_format), step=run.step, reason=str(error),
        last_metrics=run.last_metrics, config_dict=cfg.to_dict(),
        worst_layers=diag_lib.worst_layers(run.last_metrics, "diag/stall_ratio/"))
    write_json(os.path.join(run.workdir, "results.json"),
               {"status": "diverged", "step": run.step, "reason": str(error),
                "workdir": run.workdir,
                "perf": run.timer.results()})
    run.console.line(f"diverged at step {run.step}: {error}")


def _finish(run: Run) -> dict:
    """Final evaluation and results.json (phase 4)."""
    if run.status == "completed":
        run.ckpt.save(run.step, run.state, extra=run.extra(), force=True)
    results = final_results(run)
    if parallel.is_main_process():
        write_json(os.path.join(run.workdir, "results.json"), results)
    return results


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | None = None) -> dict:
    """Trains, evaluates and writes the run folder; returns the results dict (also results.json).

    Raises:
      TrainingDiverged: after ``train.nan_patience`` consecutive non-finite steps (the failure
        report, an anomaly checkpoint and results.json with ``status="diverged"`` are written
        first).
      ValueError / FileNotFoundError: for bad config values or missing data, with the fix named.
    """
    if int(config.mesh.get("vmap_seeds", 1)) != 1:
        raise ValueError("mesh.vmap_seeds > 1 trains several runs: use launch.py or "
                         "altgrad_jax.train.seeds.train_seeds_together (train_and_evaluate "
                         "trains one run)")
    workdir = os.path.abspath(workdir or default_workdir(config))
    done = completed_results(workdir, config)
    if done is not None:
        return done
    run = _setup(config, workdir)
    try:
        _restore(run)
        _train(run)
        return _finish(run)
    except TrainingDiverged as e:
        _finish_diverged(run, e)
        raise
    finally:
        _close(run)


# The phases by name, for drivers of several runs (altgrad_jax.train.seeds).
setup_run, restore_run, finish_run, finish_diverged, close_run = (
    _setup, _restore, _finish, _finish_diverged, _close)
