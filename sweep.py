"""Run the "format x optimizer x seed" matrix, one run after another, then write the report.

  python sweep.py --config=configs/matrix.py [--config.seeds=0,1] [--config.formats=E4M3,E5M2]
      [--set=train.num_steps=600 ...] [--only=E5M2/adamw/0,...] [--dry_run] [--retry_diverged]

Flags:
  --config          a matrix config (``configs/matrix.py``); any of its fields can be overridden
                    with ``--config.<field>=...``.
  --set             ``group.field=value`` applied to every run (repeatable), after the
                    config's ``overrides``.
  --only            run only these cells (``FORMAT/OPTIMIZER/SEED``, comma-separated); the plan
                    and the report still cover the whole matrix.
  --dry_run         print the plan (and write nothing).
  --retry_diverged  rerun diverged runs (default: a diverged run is a result and is skipped).

Each run lives in ``<out_dir>/<format>__<optimizer>__s<seed>``. A completed run is skipped, an
interrupted one resumes from its checkpoint (``train_and_evaluate`` does that), a diverging one is
recorded and the sweep goes on. ``<out_dir>/matrix.json`` holds the plan, ``<out_dir>/report.md``
the report (regenerate it with ``python -m altgrad_jax.analysis.report --sweep_dir=<out_dir>``).
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/matrix.py", "Matrix config file.",
                                          lock_config=True)
_SET = flags.DEFINE_multi_string("set", [], "group.field=value override for every run.")
_ONLY = flags.DEFINE_list("only", [], "Cells to run: FORMAT/OPTIMIZER/SEED,...")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the plan only.")
_RETRY_DIVERGED = flags.DEFINE_bool("retry_diverged", False, "Rerun diverged runs.")


def _status(workdir: str) -> str | None:
    path = os.path.join(workdir, "results.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f).get("status")
    except (OSError, ValueError):
        return None


def _user_overrides(spec):
    """The matrix/--set overrides of a spec (parsed and typed), without its preset's."""
    from altgrad_jax.analysis.matrix import OPTIMIZER_PRESETS

    return spec.overrides[len(OPTIMIZER_PRESETS[spec.optimizer]):]


def plan(matrix_cfg, extra_overrides=(), only=()):
    """(all specs, selected specs) of a matrix config; ValueError for bad input."""
    from altgrad_jax.analysis import matrix as matrix_lib

    specs = matrix_lib.expand(matrix_cfg, extra_overrides=extra_overrides)
    return specs, matrix_lib.select(specs, only)


def run_sweep(matrix_cfg, *, extra_overrides=(), only=(), dry_run=False, retry_diverged=False,
              log=print) -> dict:
    """Plans, runs (sequentially, in this process) and reports a matrix.

    Returns:
      ``{"planned": n, "ran": [...], "skipped": [...], "diverged": [...], "report": path}``
      (``report`` is None for a dry run).

    Raises:
      ValueError: bad matrix input (unknown format / preset / field, bad ``--only`` entry).
    """
    from altgrad_jax.analysis import matrix as matrix_lib

    specs, selected = plan(matrix_cfg, extra_overrides, only)
    out = {"planned": len(specs), "ran": [], "skipped": [], "diverged": [], "report": None}
    log(f"matrix: {len(specs)} runs planned in {matrix_cfg.out_dir} "
        f"({len(selected)} selected)")
    for spec in selected:
        state = _status(spec.workdir) or "new"
        log(f"  {spec.name:<40s} {state:<11s} {dict(spec.overrides)}")
    if dry_run:
        return out

    os.makedirs(matrix_cfg.out_dir, exist_ok=True)
    plan_doc = {"version": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "matrix": {**json.loads(matrix_cfg.to_json()),
                           "overrides": [f"{k}={v!r}" for k, v in _user_overrides(specs[0])]},
                "presets": {k: v for k, v in matrix_lib.OPTIMIZER_PRESETS.items()
                            if k in {s.optimizer for s in specs}},
                "runs": [s.to_dict() for s in specs]}
    with open(os.path.join(matrix_cfg.out_dir, "matrix.json"), "w") as f:
        json.dump(plan_doc, f, indent=2)

    import jax

    from altgrad_jax.analysis.report import write_report
    from altgrad_jax.train.loop import TrainingDiverged, train_and_evaluate

    base = matrix_lib.load_config_file(str(matrix_cfg.base_config))
    for i, spec in enumerate(selected, start=1):
        status = _status(spec.workdir)
        if status == "completed" or (status == "diverged" and not retry_diverged):
            log(f"[{i}/{len(selected)}] {spec.name}: {status}, skipped")
            out["skipped"].append(spec.name)
            continue
        log(f"[{i}/{len(selected)}] {spec.name}: "
            f"{'resuming' if status else 'starting'} in {spec.workdir}")
        try:
            results = train_and_evaluate(matrix_lib.run_config(spec, base), spec.workdir)
            test = results.get("test") or {}
            log(f"[{i}/{len(selected)}] {spec.name}: {results['status']}, test micro-F1 "
                f"{test.get('test/micro_f1')}")
            out["ran"].append(spec.name)
        except TrainingDiverged as e:
            log(f"[{i}/{len(selected)}] {spec.name}: DIVERGED ({e}); continuing")
            out["diverged"].append(spec.name)
        finally:
            jax.clear_caches()  # every run compiles its own functions; do not keep them all
    out["report"] = write_report(str(matrix_cfg.out_dir))
    log(f"report: {out['report']}")
    return out


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        run_sweep(_CONFIG.value, extra_overrides=tuple(_SET.value), only=tuple(_ONLY.value),
                  dry_run=_DRY_RUN.value, retry_diverged=_RETRY_DIVERGED.value,
                  log=logging.info if not _DRY_RUN.value else print)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)
