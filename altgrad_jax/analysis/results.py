"""Load a sweep folder into a tidy list of runs (one `Run` per format x optimizer x seed cell).

A sweep folder holds ``matrix.json`` (the plan written by ``sweep.py``) and one run folder per cell
named ``<format>__<optimizer>__s<seed>`` (see `altgrad_jax.analysis.matrix`). Each run folder has
``results.json`` once the run stopped (``status`` completed / diverged / interrupted) and
``metrics.jsonl`` while it trains. A planned cell without a folder is ``"missing"``; a folder
without ``results.json`` is ``"incomplete"`` (killed, or still running).

Per-run summaries computed from ``metrics.jsonl`` (keys of `Run.values`):

* ``summary/stall_ratio_tail``: mean ``diag/stall_ratio`` (else ``optim/stall_ratio``) over the
  logged steps in the last 20% of the run (``step >= 0.8 * last logged step``).
* ``summary/windowed_stall_ratio_final``: the last ``diag/windowed_stall_ratio``.
* ``summary/flip_rate_final``: the last ``diag/flip_rate`` (flips / number of weights); else the
  last ``optim/flips / optim/updates``.
* ``summary/rank_effective_mean_final``: the last ``rank/effective_mean`` (needs diag.rank_every).
* ``summary/train_loss_final``: the last ``train/loss``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

from altgrad_jax.analysis.matrix import parse_run_name

TAIL_FRACTION = 0.2
# Final metrics copied from results.json into Run.values (when present).
_RESULT_GROUPS = ("validation", "test", "test_tuned")
_RESULT_SCALARS = ("steps_per_s", "samples_per_s", "train_time_s", "wall_time_s")


def read_jsonl(path: str) -> list[dict]:
    """The JSON objects of a JSON-lines file (blank lines skipped).

    Raises:
      ValueError: a line that is not a JSON object, as ``path:line: ...``.
    """
    rows = []
    with open(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: malformed JSON line: {e.msg} "
                                 f"(column {e.colno})") from e
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got "
                                 f"{type(obj).__name__}")
            rows.append(obj)
    return rows


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            obj = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: malformed JSON: {e.msg}") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return obj


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def _last(rows: list[dict], key: str) -> float | None:
    for row in reversed(rows):
        v = _num(row.get(key))
        if v is not None:
            return v
    return None


def summarize_metrics(rows: list[dict], tail_fraction: float = TAIL_FRACTION) -> dict:
    """The ``summary/*`` values (see the module docstring) from metrics.jsonl rows."""
    out: dict[str, float | None] = {}
    key = "diag/stall_ratio" if any("diag/stall_ratio" in r for r in rows) else "optim/stall_ratio"
    pts = [(r["step"], _num(r.get(key))) for r in rows if _num(r.get(key)) is not None
           and _num(r.get("step")) is not None]
    if pts:
        last_step = max(s for s, _ in pts)
        tail = [v for s, v in pts if s >= (1.0 - tail_fraction) * last_step]
        out["summary/stall_ratio_tail"] = sum(tail) / len(tail)
    else:
        out["summary/stall_ratio_tail"] = None
    out["summary/windowed_stall_ratio_final"] = _last(rows, "diag/windowed_stall_ratio")
    flip = _last(rows, "diag/flip_rate")
    if flip is None:
        flips, updates = _last(rows, "optim/flips"), _last(rows, "optim/updates")
        flip = flips / updates if flips is not None and updates else None
    out["summary/flip_rate_final"] = flip
    out["summary/rank_effective_mean_final"] = _last(rows, "rank/effective_mean")
    out["summary/train_loss_final"] = _last(rows, "train/loss")
    return out


@dataclasses.dataclass
class Run:
    """One cell of a sweep.

    Attributes:
      name, format, optimizer, seed: the cell (``format`` as named in the matrix).
      status: results.json's status (``completed``, ``diverged``, ``interrupted``, ...), or
        ``missing`` (planned, no folder) / ``incomplete`` (folder without results.json).
      step: the last step reached (results.json, else metrics.jsonl), None if unknown.
      dataset: ``synthetic`` / ``eurlex57k`` / None (unknown).
      reason: why a run stopped early (results.json ``reason``), else "".
      values: flat final metrics (``test/micro_f1``, ``test/macro_f1``, ``test_tuned/micro_f1``,
        ``eval/micro_f1``, ``steps_per_s``, ``samples_per_s``, ``train_time_s``, ...) and the
        ``summary/*`` values; a key is absent or None when the run did not produce it.
      curve: ``((step, train/loss), ...)`` from metrics.jsonl.
      fallback_events: number of format fallbacks recorded in results.json.
      workdir: the run folder.
    """

    name: str
    format: str
    optimizer: str
    seed: int
    status: str
    step: int | None = None
    dataset: str | None = None
    reason: str = ""
    values: dict = dataclasses.field(default_factory=dict)
    curve: tuple = ()
    fallback_events: int = 0
    workdir: str = ""

    def get(self, key: str, default: Any = None) -> Any:
        """``values[key]`` (None / default when absent)."""
        v = self.values.get(key)
        return default if v is None else v

    @property
    def finite_loss(self) -> bool:
        """False when the last logged train loss is NaN/inf."""
        v = self.values.get("summary/train_loss_final")
        return v is None or math.isfinite(v)


def load_run(workdir: str, *, format: str | None = None, optimizer: str | None = None,
             seed: int | None = None) -> Run:
    """One run folder as a `Run` (cell identity parsed from the folder name unless given).

    Raises:
      ValueError: a malformed results.json / metrics.jsonl (naming file and line), or a folder
        name that is not ``<format>__<optimizer>__s<seed>`` when the cell is not given.
    """
    name = os.path.basename(os.path.normpath(workdir))
    if format is None or optimizer is None or seed is None:
        parsed = parse_run_name(name)
        if parsed is None:
            raise ValueError(f"{workdir}: not a matrix run folder name "
                             f"(<format>__<optimizer>__s<seed>)")
        format, optimizer, seed = parsed
    run = Run(name=name, format=format, optimizer=optimizer, seed=int(seed), status="missing",
              workdir=workdir)
    if not os.path.isdir(workdir):
        return run
    results_path = os.path.join(workdir, "results.json")
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    rows = read_jsonl(metrics_path) if os.path.exists(metrics_path) else []
    run.values.update(summarize_metrics(rows))
    run.curve = tuple((int(r["step"]), float(r["train/loss"])) for r in rows
                      if _num(r.get("step")) is not None and _num(r.get("train/loss")) is not None)
    steps = [int(r["step"]) for r in rows if _num(r.get("step")) is not None]
    run.step = max(steps) if steps else None
    run.status = "incomplete"
    if os.path.exists(results_path):
        res = _read_json(results_path)
        run.status = str(res.get("status", "unknown"))
        run.reason = str(res.get("reason", "") or "")
        if _num(res.get("step")) is not None:
            run.step = int(res["step"])
        for group in _RESULT_GROUPS:
            for k, v in (res.get(group) or {}).items():
                if _num(v) is not None:
                    run.values[k] = float(v)
        for k in _RESULT_SCALARS:
            if _num(res.get(k)) is not None:
                run.values[k] = float(res[k])
        run.fallback_events = len(res.get("fallback_events") or [])
        run.dataset = (res.get("data_info") or {}).get("dataset") or res.get("dataset")
    if run.dataset is None and os.path.exists(os.path.join(workdir, "data_info.json")):
        run.dataset = _read_json(os.path.join(workdir, "data_info.json")).get("dataset")
    return run


def read_plan(sweep_dir: str) -> dict | None:
    """``matrix.json`` of a sweep folder, or None when there is none."""
    path = os.path.join(sweep_dir, "matrix.json")
    return _read_json(path) if os.path.exists(path) else None


def load_sweep(sweep_dir: str) -> list[Run]:
    """Every run of a sweep folder: the cells planned in matrix.json (``missing`` when never
    started) plus any other ``<format>__<optimizer>__s<seed>`` folder found there (e.g. from an
    earlier plan with other seeds). Sorted by format (plan order first), optimizer, seed.

    Raises:
      FileNotFoundError: ``sweep_dir`` does not exist.
      ValueError: a malformed file in a run folder (``file:line``).
    """
    if not os.path.isdir(sweep_dir):
        raise FileNotFoundError(f"sweep folder {sweep_dir!r} does not exist")
    plan = read_plan(sweep_dir) or {}
    cells: dict[str, tuple[str, str, int]] = {}
    for entry in plan.get("runs", []):
        cells[entry["name"]] = (entry["format"], entry["optimizer"], int(entry["seed"]))
    for name in sorted(os.listdir(sweep_dir)):
        parsed = parse_run_name(name)
        if parsed is not None and os.path.isdir(os.path.join(sweep_dir, name)):
            cells.setdefault(name, parsed)
    runs = [load_run(os.path.join(sweep_dir, name), format=f, optimizer=o, seed=s)
            for name, (f, o, s) in cells.items()]
    fmt_order = {f: i for i, f in enumerate((plan.get("matrix") or {}).get("formats", []))}
    opt_order = {o: i for i, o in enumerate((plan.get("matrix") or {}).get("optimizers", []))}
    runs.sort(key=lambda r: (fmt_order.get(r.format, len(fmt_order)), r.format,
                             opt_order.get(r.optimizer, len(opt_order)), r.optimizer, r.seed))
    return runs


def to_rows(runs: list[Run]) -> list[dict]:
    """The runs as flat dicts (one per run): cell, status, step, dataset and every value."""
    return [{"name": r.name, "format": r.format, "optimizer": r.optimizer, "seed": r.seed,
             "status": r.status, "step": r.step, "dataset": r.dataset, **r.values} for r in runs]


def axes_order(runs) -> tuple[list[str], list[str]]:
    """(formats, optimizers) in order of first appearance among ``runs`` (the plan's order)."""
    formats, optimizers = [], []
    for r in runs:
        if r.format not in formats:
            formats.append(r.format)
        if r.optimizer not in optimizers:
            optimizers.append(r.optimizer)
    return formats, optimizers
