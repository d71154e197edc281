"""Run a study's cells in run order, write a compact record per finished run, rebuild the report.

  python sweep.py --config=configs/study_cpu.py [--dry_run] [--only=E5M2/ulp_sr/1,...]
      [--set=train.num_steps=600 ...] [--retry_diverged]

Flags:
  --config          a study config (``configs/study_cpu.py``); fields overridable with
                    ``--config.<field>=...``.
  --set             ``group.field=value`` applied to every cell (repeatable).
  --only            run only these cells (``FORMAT/ARM/SEED[/FACTOR]`` or run names).
  --dry_run         print the cells in run order, which are done, and the estimated core-hours.
  --retry_diverged  move each diverged run folder aside (renamed, kept) and start it fresh.

Each cell trains in ``<run_dir>/<name>`` (checkpoints; ignored by git). When it stops, its
compact record goes to ``<report_dir>/runs/<name>.json`` (tracked); after each stage that
trained and at the end the report is rebuilt from the records alone (``python -m altgrad_jax.analysis.report --study=<report_dir>``). A cell
whose record says completed is never rerun; a diverged one is a result and is skipped unless
``--retry_diverged``; an interrupted one resumes from its checkpoint. The tuning stage's records
choose each arm's factor, applied to the arm's later cells; a cell whose arm's tuning is still
pending is skipped ("blocked"). A cell another study (``reuse_from``) has already run with the
very same program is not trained: that record is copied (`altgrad_jax.analysis.reuse`).
Several sweep processes may share one study (one per core): each claims a cell with a lock
file ``<run_dir>/<name>.lock`` before training it.

With ``--config.vmap_seeds=S`` (S > 1) the cells of a non-tuning stage that differ only by seed
are trained S at a time as one vmapped seed group (`altgrad_jax.train.seeds`: one compile, one
launch per step; on a GPU this is how a small model fills the device). Records and run folders
are the same as for separate runs; a group of one falls back to the single-run path.
"""

from __future__ import annotations

import os
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/study_cpu.py",
                                          "Study config file.", lock_config=True)
_SET = flags.DEFINE_multi_string("set", [], "group.field=value override for every cell.")
_ONLY = flags.DEFINE_list("only", [], "Cells to run: FORMAT/ARM/SEED[/FACTOR] or run names.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the plan and its cost only.")
_RETRY_DIVERGED = flags.DEFINE_bool("retry_diverged", False,
                                    "Move diverged run folders aside and rerun them fresh.")
_COMPILATION_CACHE = flags.DEFINE_bool(
    "compilation_cache", True, "Keep compiled programs in <run_dir>/.jax_cache (XLA's persistent "
    "cache): cells that differ only by seed reuse them instead of recompiling (~110 s a run).")


WAIT_POLL_S = 30.0  # how often a sweep blocked on another process's tuning run looks again


def _live_lock(path: str) -> bool:
    """True when the lock file ``path`` exists and names a live process (on this machine)."""
    try:
        pid = int(open(path).read().strip() or 0)
        os.kill(pid, 0)
        return pid > 0
    except (ValueError, OSError):
        return False


def _claim(path: str) -> bool:
    """Creates the lock file ``path`` (atomically); a stale lock (dead pid) is taken over."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if _live_lock(path):
                return False  # held by a live process
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


def _move_aside(workdir: str) -> str | None:
    """Renames a run folder to ``<workdir>.diverged-<n>`` (kept); returns the new path."""
    if not os.path.isdir(workdir):
        return None
    n = 1
    while os.path.exists(f"{workdir}.diverged-{n}"):
        n += 1
    os.rename(workdir, f"{workdir}.diverged-{n}")
    return f"{workdir}.diverged-{n}"


def _record_from_folder(spec, chosen, report_dir):
    """Writes the record of a run folder that stopped (results.json present); returns it."""
    from altgrad_jax.analysis import matrix as matrix_lib
    from altgrad_jax.analysis import records as records_lib

    field, value, factor = matrix_lib.tuned_value(spec, chosen)
    rec = records_lib.make_record(spec, spec.workdir,
                                  applied={"field": field, "value": value, "factor": factor})
    records_lib.write_record(report_dir, rec)
    return rec


def _rebuild_report(study, log) -> str | None:
    from altgrad_jax.analysis.report import write_report

    try:
        return write_report(study.report_dir)
    except Exception as e:  # the report never stops the sweep; rebuild it by hand
        log(f"report not rebuilt ({type(e).__name__}: {e})")
        return None


def _reuse(spec, study, records, chosen, log, tag) -> bool:
    """Copies another study's record of exactly this cell's program (``reuse_from``;
    `altgrad_jax.analysis.reuse`) instead of training it; False when there is none or the cell
    already has a record or a run folder of its own."""
    from altgrad_jax.analysis import records as records_lib
    from altgrad_jax.analysis import reuse as reuse_lib

    if spec.name in records or os.path.isdir(spec.workdir):
        return False
    found = study.reusable(spec, chosen)
    if found is None:
        return False
    source, rec = found
    records_lib.write_record(study.report_dir, reuse_lib.reused_record(rec, spec.stage, source))
    log(f"{tag} {spec.name}: the same program's record reused from {source}")
    return True


def _one(spec, study, records, chosen, retry_diverged, log, tag) -> str:
    """Trains one cell if it needs it; returns what happened (ran/skipped/diverged/...)."""
    from altgrad_jax.analysis import matrix as matrix_lib
    from altgrad_jax.train.loop import TrainingDiverged, train_and_evaluate

    rec = records.get(spec.name)
    if rec is None and os.path.exists(os.path.join(spec.workdir, "results.json")):
        rec = _record_from_folder(spec, chosen, study.report_dir)  # recorded late
    status = (rec or {}).get("status")
    if status == "completed" or (status == "diverged" and not retry_diverged):
        log(f"{tag} {spec.name}: {status}, skipped")
        return "skipped"
    lock = os.path.join(study.run_dir, f"{spec.name}.lock")
    if not _claim(lock):
        log(f"{tag} {spec.name}: claimed by another sweep process, skipped")
        return "claimed"
    try:
        if status == "diverged":
            moved = _move_aside(spec.workdir)
            log(f"{tag} {spec.name}: diverged before; folder moved to {moved}, starting fresh")
        log(f"{tag} {spec.name}: {'resuming' if os.path.isdir(spec.workdir) else 'starting'}")
        cfg = matrix_lib.run_config(spec, study.base, chosen=chosen)
        outcome = "ran"
        try:
            train_and_evaluate(cfg, spec.workdir)
        except TrainingDiverged as e:
            log(f"{tag} {spec.name}: DIVERGED ({e}); continuing")
            outcome = "diverged"
        rec = _record_from_folder(spec, chosen, study.report_dir)
        log(f"{tag} {spec.name}: {rec['status']}, test macro-F1 (tuned) "
            f"{rec['metrics'].get('test_tuned/macro_f1')}")
        return outcome
    finally:
        os.remove(lock)


def _siblings(spec, selected) -> list:
    """``spec`` and the later cells of ``selected`` that differ from it only by seed: the
    candidates of one seed group (`_group` takes the first ``size`` it can claim)."""
    same = [s for s in selected if (s.stage, s.format, s.arm, s.factor) == (
        spec.stage, spec.format, spec.arm, spec.factor)]
    return same[same.index(spec):]


def _group(specs, size, study, records, chosen, log, tag) -> list[tuple[str, str]]:
    """Trains up to ``size`` cells of ``specs`` that need it as one vmapped seed group; falls back
    to `_one` when fewer than two are left (finished, diverged or claimed by another process)."""
    from altgrad_jax.analysis import matrix as matrix_lib
    from altgrad_jax.train import seeds as seeds_lib

    fresh = [s for s in specs if (records.get(s.name) or {}).get("status") is None
             and not os.path.exists(os.path.join(s.workdir, "results.json"))
             and study.reusable(s, chosen) is None]
    locks = [os.path.join(study.run_dir, f"{s.name}.lock") for s in fresh]
    mine = []
    for s, lk in zip(fresh, locks):
        if len(mine) < size and _claim(lk):
            mine.append((s, lk))
    if len(mine) < 2:
        for _, lk in mine:
            os.remove(lk)
        return [(_one(specs[0], study, records, chosen, False, log, tag), specs[0].name)]
    group = [s for s, _ in mine]
    try:
        log(f"{tag} {', '.join(s.name for s in group)}: one vmapped seed group")
        cfgs = [matrix_lib.run_config(s, study.base, chosen=chosen) for s in group]
        seeds_lib.train_seeds_together(cfgs, [s.workdir for s in group])
        out = []
        for s in group:
            rec = _record_from_folder(s, chosen, study.report_dir)
            log(f"{tag} {s.name}: {rec['status']}, test macro-F1 (tuned) "
                f"{rec['metrics'].get('test_tuned/macro_f1')}")
            out.append(("diverged" if rec["status"] == "diverged" else "ran", s.name))
        return out
    finally:
        for _, lk in mine:
            os.remove(lk)


def _wait_for_tuning(study, spec, log, tag):
    """(records, choices), after waiting while the arm's missing tuning runs are being trained by
    another live sweep process (one process per core shares one study)."""
    while True:
        records = study.records()
        choices = study.choices(records)
        ch = study.choice(choices, spec)
        if spec.is_tuning or ch is None or ch.status != "pending" or not any(
                _live_lock(os.path.join(study.run_dir, f"{n}.lock")) for n in ch.missing):
            return records, choices
        log(f"{tag} {spec.name}: waiting for the tuning of {ch.arm} "
            f"({len(ch.missing)} runs left, trained by another process)")
        time.sleep(WAIT_POLL_S)


def _next_cell(study, only, visited):
    """(the first cell of the plan in run order not yet visited by this process, the selected
    cells), from the current records: a tuning cell added by the bracket-extension rule is
    visited in its place, before the later cells that wait for it."""
    from altgrad_jax.analysis import matrix as matrix_lib

    selected = matrix_lib.select(study.refresh(), only)
    return next((s for s in selected if s.name not in visited), None), selected


def run_sweep(study_cfg, *, extra_overrides=(), only=(), dry_run=False, retry_diverged=False,
              log=print) -> dict:
    """Plans and runs (sequentially, in this process) a study.

    Returns:
      ``{"planned": n, "ran": [...], "skipped": [...], "diverged": [...], "blocked": [...],
      "claimed": [...], "reused": [...], "report": path or None}``.

    Raises:
      ValueError: bad study input (unknown format / arm / field, bad ``--only`` entry).
    """
    from altgrad_jax.analysis import matrix as matrix_lib
    from altgrad_jax.analysis import study as study_lib
    from altgrad_jax.analysis import tuning as tuning_lib

    study = study_lib.open_study(study_cfg, extra_overrides=extra_overrides)
    selected = matrix_lib.select(study.specs, only)
    out = {"planned": len(study.specs), "ran": [], "skipped": [], "diverged": [], "blocked": [],
           "claimed": [], "reused": [], "report": None}
    if dry_run:
        for line in study_lib.dry_run_lines(study, selected):
            log(line)
        return out
    import jax

    trained_in_stage, visited = False, set()
    spec, selected = _next_cell(study, only, visited)
    while spec is not None:
        visited.add(spec.name)
        tag = f"[{len(visited)}/{len(selected)}]"
        records, choices = _wait_for_tuning(study, spec, log, tag)
        study_lib.write_plan(study, choices)
        ch = study.choice(choices, spec)
        if not spec.is_tuning and ch is not None and ch.status != "chosen":
            log(f"{tag} {spec.name}: blocked (tuning of {ch.arm} {ch.status}: "
                f"{', '.join(ch.missing) or 'no finite score'})")
            out["blocked"].append(spec.name)
            spec, selected = _next_cell(study, only, visited)
            continue
        chosen = tuning_lib.chosen_factors(choices.values())
        if _reuse(spec, study, records, chosen, log, tag):
            out["reused"].append(spec.name)
            spec, selected = _next_cell(study, only, visited)
            continue
        size = int(study_cfg.get("vmap_seeds", 1))
        if size > 1 and not spec.is_tuning and not retry_diverged:
            whats = _group(_siblings(spec, selected), size, study, records, chosen, log,
                           tag)
            for w, name in whats:
                out[w].append(name)
            what = "ran" if {"ran", "diverged"} & {w for w, _ in whats} else whats[0][0]
        else:
            what = _one(spec, study, records, chosen, retry_diverged, log, tag)
            out[what].append(spec.name)
        if what in ("ran", "diverged"):
            jax.clear_caches()  # every run compiles its own functions; do not keep them all
            trained_in_stage = True
        following, selected = _next_cell(study, only, visited)
        if trained_in_stage and (following is None or following.stage != spec.stage):
            _rebuild_report(study, log)  # the report after every stage that trained
            trained_in_stage = False
        spec = following
    out["planned"] = len(study.specs)
    study_lib.write_plan(study, study.choices())
    out["report"] = _rebuild_report(study, log)
    log(f"report: {out['report']}")
    return out


def _enable_compilation_cache(path: str) -> None:
    """XLA's persistent compilation cache: an executable is reused only for an identical program,
    so results are unchanged; only the compile time (recorded in each run's perf) drops."""
    import jax

    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _COMPILATION_CACHE.value and not _DRY_RUN.value:
        _enable_compilation_cache(os.path.join(str(_CONFIG.value.run_dir), ".jax_cache"))
    try:
        run_sweep(_CONFIG.value, extra_overrides=tuple(_SET.value), only=tuple(_ONLY.value),
                  dry_run=_DRY_RUN.value, retry_diverged=_RETRY_DIVERGED.value,
                  log=print if _DRY_RUN.value else logging.info)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)
