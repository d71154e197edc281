"""Several seeds of one configuration trained by one vmapped program (``mesh.vmap_seeds``).

`train_seeds_together(configs, workdirs)` trains S runs whose configs differ only in their seed
fields (`SEED_FIELDS`: init + dropout, data order, stochastic rounding) and their names. Each run
keeps its own folder, exactly what `altgrad_jax.train.loop.train_and_evaluate` writes (config,
metrics.jsonl, checkpoints, results.json), so a group run and S separate runs are interchangeable
record for record; what changes is how the steps are computed::

    _setup + _restore each run        (its own data order, init, dropout and rounding keys)
    stack the S train states          (a new leading axis on every leaf)
    every step: one vmapped program   (S batches stacked, one compile, one launch)
                unstack (one jitted program) -> each run's periodic actions (log, eval, rank,
                checkpoint ...) on its own state, as in the single-run loop
    _finish each run

Semantics and limits (decided here, tested in tests/test_multi_seed.py):

* Results equal S separate runs up to float32 summation order: the batched matmuls may add in a
  different order, so losses agree to ~1e-6 relative, not bit for bit (the test bounds it).
* A seed that diverges is finished as a diverged run (failure report, results.json); the others
  continue one by one on the ordinary loop from that step.
* Runs resumed at different steps (e.g. some started alone) are trained one by one, not grouped.
* The group lives on one device (``mesh.data=1``); a format fallback (``stability.fallback``)
  would give the seeds different programs, so it is refused with ``vmap_seeds > 1``.
* Evaluation, rank health and the FP32 shadow run per seed, unbatched (they are a small share of
  the time); throughput in each run's results is that run's samples over the group's step time
  (``perf.vmap_seeds`` says S: the group's throughput is S times it).
"""

from __future__ import annotations

import os
import time
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from altgrad_jax import parallel
from altgrad_jax.train import loop as loop_lib
from altgrad_jax.train import periodic
from altgrad_jax.train.results import _flatten, completed_results

SEED_FIELDS = ("train.seed", "data.seed", "optimizer.seed")  # what distinguishes two seeds

__all__ = ["SEED_FIELDS", "seed_configs", "seed_workdirs", "train_seeds_together"]


def _get(cfg: ml_collections.ConfigDict, dotted: str):
    group, field = dotted.split(".")
    return cfg[group][field]


def seed_configs(config: ml_collections.ConfigDict) -> list[ml_collections.ConfigDict]:
    """The S = ``mesh.vmap_seeds`` configs of a launch: every seed field + 0 .. S-1.

    Example:
      >>> from configs import default
      >>> c = default.get_config(); c.mesh.vmap_seeds = 2
      >>> [(x.train.seed, x.data.seed, x.name) for x in seed_configs(c)]
      [(0, 0, 'default_seed0'), (1, 1, 'default_seed1')]
    """
    n = parallel.seed_list(0, int(config.mesh.vmap_seeds))
    out = []
    for i in n:
        c = ml_collections.ConfigDict(config.to_dict())
        for f in SEED_FIELDS:
            group, field = f.split(".")
            c[group][field] = int(_get(config, f)) + i
        c.name = f"{config.name}_seed{i}"
        c.mesh.vmap_seeds = 1  # each run's own config: the grouping belongs to the driver
        out.append(c)
    return out


def seed_workdirs(workdir: str, num_seeds: int) -> list[str]:
    """``<workdir>/seed<i>`` for i = 0 .. S-1 (the folders of a launch with ``vmap_seeds=S``)."""
    return [os.path.join(workdir, f"seed{i}") for i in range(num_seeds)]


def _check_group(configs: Sequence[ml_collections.ConfigDict]) -> None:
    """One-line errors: the configs must be one program (equal but for seeds and names)."""
    if not configs:
        raise ValueError("train_seeds_together needs at least one config")

    def program(c):
        d = ml_collections.ConfigDict(c.to_dict())
        for f in SEED_FIELDS:
            group, field = f.split(".")
            d[group][field] = 0
        d.name = ""
        return d.to_dict()

    first = _flatten(program(configs[0]))
    for c in configs[1:]:
        this = _flatten(program(c))
        if this != first:
            diff = sorted(k for k in set(this) | set(first) if this.get(k) != first.get(k))
            raise ValueError(f"configs of one seed group may differ only in {SEED_FIELDS} and "
                             f"name; {c.name} also differs in {diff[:5]}")
    c = configs[0]
    if bool(c.stability.fallback):
        raise ValueError("mesh.vmap_seeds > 1 cannot follow per-seed format fallbacks; set "
                         "stability.fallback=False or mesh.vmap_seeds=1")
    if int(c.mesh.data) != 1 and jax.device_count() > 1:
        raise ValueError("mesh.vmap_seeds > 1 runs the seed group on one device; set mesh.data=1 "
                         "(or mesh.vmap_seeds=1 to shard one run over the devices)")


class _Group:
    """The vmapped train / diagnostics steps and the unstacking program of S runs."""

    def __init__(self, runs: Sequence[loop_lib.Run]):
        p, self.size = runs[0].programs, len(runs)
        self.train = jax.jit(jax.vmap(p.train_fn), donate_argnums=0)
        self.diag = jax.jit(jax.vmap(p.diag_fn), donate_argnums=0)
        n = self.size
        self.unstack = jax.jit(lambda s, m: tuple(
            jax.tree.map(lambda x: x[i], (s, m)) for i in range(n)))
        self.compiled: dict = {}
        self.compile_s = 0.0

    def call(self, name: str, fn, *args):
        """Runs ``fn`` compiled ahead of time on first use (the compile time is counted)."""
        if name not in self.compiled:
            t0 = time.perf_counter()
            self.compiled[name] = fn.lower(*args).compile()
            self.compile_s += time.perf_counter() - t0
        return self.compiled[name](*args)


def _stack_batches(batches: Sequence[dict]) -> dict:
    return {k: np.stack([b[k] for b in batches]) for k in batches[0]}


def _group_step(runs, group: _Group, stacked):
    """One step of every run: the vmapped program, then each run's state and metrics."""
    t0, compile_before = time.perf_counter(), group.compile_s
    np_batches = [next(r.train_iter) for r in runs]
    due = runs[0].actions_by_type(periodic.DiagAction).is_diag_step(runs[0].step)
    name, fn = ("diag", group.diag) if due else ("train", group.train)
    stacked, metrics = group.call(name, fn, stacked, _stack_batches(np_batches))
    parts = group.call(f"unstack_{name}", group.unstack, stacked, metrics)
    jax.block_until_ready(parts[0][0].nonfinite_streak)
    seconds = time.perf_counter() - t0 - (group.compile_s - compile_before)
    for r, (state, m), b in zip(runs, parts, np_batches):
        r.state, r.batch = state, b
        r.timer.compile_s += group.compile_s - compile_before
        r.timer.add(seconds, int((b["input_ids"] != 0).sum()))
        r.step += 1
        r.steps_this_run += 1
        r.bar.update(1)
    return stacked, [m for _, m in parts]


def _train_group(runs) -> None:
    """Steps the group while every run is training; stops at the first divergence (the others
    then continue one by one from their unstacked states)."""
    group = _Group(runs)
    for r in runs:
        r.timer.vmap_seeds = len(runs)
    stacked = parallel.stack_states([r.state for r in runs])
    while all(r.step < r.num_steps and r.status == "completed" for r in runs):
        stacked, metrics = _group_step(runs, group, stacked)
        for r, m in zip(runs, metrics):
            try:
                for action in r.actions:
                    action(r, r.step, m)
            except periodic.TrainingDiverged as e:
                loop_lib.finish_diverged(r, e)


def train_seeds_together(configs: Sequence[ml_collections.ConfigDict],
                         workdirs: Sequence[str]) -> list[dict]:
    """Trains S seed-variants of one config with one vmapped step; one results dict per run.

    Args:
      configs: S configs equal but for `SEED_FIELDS` and ``name``.
      workdirs: S run folders (each as `train_and_evaluate` writes it).

    Returns:
      The S results dicts, in order (a completed run's is read back; nothing is rewritten).
      A diverged seed's entry is ``{"status": "diverged", ...}`` (no exception).

    Raises:
      ValueError: configs that are not one program, or options the group cannot run.
    """
    if len(configs) != len(workdirs):
        raise ValueError(f"{len(configs)} configs but {len(workdirs)} workdirs")
    _check_group(configs)
    workdirs = [os.path.abspath(w) for w in workdirs]
    results: list[Any] = [completed_results(w, c) for c, w in zip(configs, workdirs)]
    todo = [i for i, r in enumerate(results) if r is None]
    runs = []
    try:
        for i in todo:
            run = loop_lib.setup_run(configs[i], workdirs[i])
            runs.append(run)
            loop_lib.restore_run(run)
        if len(runs) > 1 and len({r.step for r in runs}) == 1:
            _train_group(runs)
        for r in runs:  # what is left after a divergence, or runs resumed at different steps
            loop_lib.train_alone(r)
        for i, r in zip(todo, runs):
            results[i] = (_read_results(r.workdir) if r.status == "diverged"
                          else loop_lib.finish_run(r))
    finally:
        for r in reversed(runs):  # log routing was nested run by run: undo it in reverse
            loop_lib.close_run(r)
    return results


def _read_results(workdir: str) -> dict:
    import json
    with open(os.path.join(workdir, "results.json")) as f:
        return json.load(f)
