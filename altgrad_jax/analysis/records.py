"""Compact run records: what survives a run folder (``reports/<study>/runs/<name>.json``).

`make_record` condenses one finished run (``results.json`` + ``metrics.jsonl`` of its folder) into
a JSON object of at most `MAX_BYTES`; the report, its CSV and plots are rebuilt from these records
alone, so a new machine loses nothing but checkpoints. A record holds:

* ``name``, ``stage``, ``format``, ``arm``, ``regime``, ``seed``, ``factor``: the cell;
* ``applied``: the tuned field and value the run trained with, and the tuning factor;
* ``status`` (``completed`` / ``diverged`` / ``interrupted``), ``step``, ``reason``, ``dataset``;
* ``metrics``: the flat final metrics of results.json's ``validation``, ``validation_tuned``
  (``eval_tuned/*``), ``test`` and ``test_tuned`` (``test_tuned/*``);
* ``threshold``, ``perf`` (training-only throughput), ``calibration``, ``fallback_events``;
* ``environment``: the versions and hardware of the process that ended the run
  (`altgrad_jax.io.provenance.environment`; ``{}`` in records that predate it);
* ``curve``: ``{key: [[step, value], ...]}`` for ``train/loss`` (thinned to `CURVE_POINTS`) and
  the ``eval/macro_f1`` / ``eval/micro_f1`` evaluation points;
* ``mechanism``: for each key of `MECHANISM_KEYS`, ``{"mean", "tail", "last", "n", "series"}``:
  the mean over all logged diagnostics steps, over the last `TAIL_FRACTION` of them, the last
  value, the count and a thinned series.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

MECHANISM_KEYS = ("diag/below_half_step", "diag/grid_steps_mean_abs", "diag/stall_ratio",
                  "diag/flips", "diag/updates", "rank/effective_mean")
MECHANISM_TITLES = {  # what each of MECHANISM_KEYS measures (plot titles, report sentences)
    "diag/below_half_step": "updates below half a grid step (fraction)",
    "diag/grid_steps_mean_abs": "mean |grid steps| moved per coordinate",
    "diag/stall_ratio": "stall ratio (updated, not moved)",
    "diag/flips": "kernel weights moved per diagnostics step",
    "diag/updates": "kernel coordinates updated",
    "rank/effective_mean": "effective rank (mean over kernels)",
}
CURVE_KEYS = ("train/loss", "eval/macro_f1", "eval/micro_f1")
CURVE_POINTS = 60
SERIES_POINTS = 25
TAIL_FRACTION = 0.2
MAX_BYTES = 50_000
FINAL = ("completed", "diverged")
_GROUPS = ("validation", "validation_tuned", "test", "test_tuned")


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


def read_json(path: str) -> dict:
    """A JSON object from ``path``; ValueError naming the file and line when malformed."""
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
    return float(v) if math.isfinite(v) else None


def thin(points: list, n: int) -> list:
    """At most ``n`` of ``points``, evenly spaced, first and last kept."""
    if len(points) <= n:
        return list(points)
    idx = sorted({round(i * (len(points) - 1) / (n - 1)) for i in range(n)})
    return [points[i] for i in idx]


def series(rows: list[dict], key: str) -> list[list[float]]:
    """``[[step, value], ...]`` of the finite values of ``key``."""
    out = []
    for r in rows:
        s, v = _num(r.get("step")), _num(r.get(key))
        if s is not None and v is not None:
            out.append([int(s), v])
    return out


def mechanism_summary(rows: list[dict], key: str) -> dict | None:
    """``{"mean", "tail", "last", "n", "series"}`` of ``key`` (None when never logged)."""
    pts = series(rows, key)
    if not pts:
        return None
    last_step = pts[-1][0]
    tail = [v for s, v in pts if s >= (1.0 - TAIL_FRACTION) * last_step] or [pts[-1][1]]
    return {"mean": sum(v for _, v in pts) / len(pts), "tail": sum(tail) / len(tail),
            "last": pts[-1][1], "n": len(pts), "series": thin(pts, SERIES_POINTS)}


def code_facts(workdir: str) -> dict:
    """What the run's code did that its config does not otherwise show: the dropout masks
    (``model.dropout_impl``; a config.json without the field predates it: threefry)."""
    path = os.path.join(workdir, "config.json")
    cfg = read_json(path) if os.path.exists(path) else {}
    return {"dropout_impl": str((cfg.get("model") or {}).get("dropout_impl", "threefry"))}


def make_record(spec, workdir: str, *, applied: dict | None = None) -> dict:
    """The compact record of the run of ``spec`` in ``workdir`` (see the module docstring).

    Args:
      spec: the cell (`altgrad_jax.analysis.matrix.RunSpec`).
      workdir: its run folder (``results.json``; ``metrics.jsonl`` optional).
      applied: ``{"field", "value", "factor"}`` the run trained with.

    Raises:
      ValueError: no ``results.json`` in ``workdir``, or a malformed file (``file:line``).
    """
    res_path = os.path.join(workdir, "results.json")
    if not os.path.exists(res_path):
        raise ValueError(f"{workdir}: no results.json (the run has not stopped)")
    res = read_json(res_path)
    met_path = os.path.join(workdir, "metrics.jsonl")
    rows = read_jsonl(met_path) if os.path.exists(met_path) else []
    metrics = {k: float(v) for g in _GROUPS for k, v in (res.get(g) or {}).items()
               if _num(v) is not None}
    rec = {"version": 1, **spec.to_dict(), "applied": dict(applied or {}),
           "code": code_facts(workdir),
           "status": str(res.get("status", "unknown")), "step": res.get("step"),
           "reason": str(res.get("reason", "") or ""),
           "dataset": (res.get("data_info") or {}).get("dataset") or res.get("dataset"),
           "metrics": metrics, "threshold": _num(res.get("threshold")),
           "perf": {k: float(v) for k, v in (res.get("perf") or {}).items()
                    if _num(v) is not None},
           "calibration": res.get("calibration") or {},
           "fallback_events": len(res.get("fallback_events") or []),
           "environment": res.get("environment") or {},
           "curve": {k: thin(series(rows, k), CURVE_POINTS) for k in CURVE_KEYS
                     if series(rows, k)},
           "mechanism": {k: m for k in MECHANISM_KEYS
                         if (m := mechanism_summary(rows, k)) is not None}}
    return _fit_size(rec)


def _fit_size(rec: dict) -> dict:
    """Drops the bulkiest optional parts until the record is under `MAX_BYTES`."""
    def size():
        return len(json.dumps(rec))
    if size() > MAX_BYTES:
        for m in rec["mechanism"].values():
            m["series"] = thin(m["series"], 8)
        rec["curve"] = {k: thin(v, 20) for k, v in rec["curve"].items()}
    if size() > MAX_BYTES:
        cal = rec["calibration"]
        rec["calibration"] = {k: cal[k] for k in list(cal)[:50]}
        rec["calibration_truncated"] = len(cal)
    return rec


def record_path(report_dir: str, name: str) -> str:
    return os.path.join(report_dir, "runs", f"{name}.json")


GITIGNORE = ("# The run records are tracked: the top-level \"runs/\" pattern (checkpoint folders) "
             "must not hide them.\n!runs/\n")


def write_record(report_dir: str, rec: dict) -> str:
    """Writes ``<report_dir>/runs/<name>.json`` atomically (a crash never leaves half a record),
    and a ``<report_dir>/.gitignore`` that un-ignores ``runs/`` (the repository ignores run
    folders named ``runs/`` at any depth)."""
    path = record_path(report_dir, rec["name"])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ignore = os.path.join(report_dir, ".gitignore")
    if not os.path.exists(ignore):
        with open(ignore, "w") as f:
            f.write(GITIGNORE)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(rec, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
    return path


def load_records(report_dir: str) -> dict[str, dict]:
    """``{name: record}`` of ``<report_dir>/runs/*.json`` ({} when there is none).

    Raises:
      ValueError: a malformed record (naming the file).
    """
    folder = os.path.join(report_dir, "runs")
    if not os.path.isdir(folder):
        return {}
    out = {}
    for fname in sorted(os.listdir(folder)):
        if fname.endswith(".json"):
            rec = read_json(os.path.join(folder, fname))
            out[rec.get("name", fname[:-5])] = rec
    return out


def value(rec: dict, key: str) -> float | None:
    """A final metric (``test_tuned/macro_f1``), ``perf/<k>``, ``mech/<key>/<stat>`` (e.g.
    ``mech/diag/stall_ratio/tail``) or ``applied/value`` of a record; None when absent."""
    if key.startswith("perf/"):
        return _num((rec.get("perf") or {}).get(key[5:]))
    if key.startswith("mech/"):
        mkey, stat = key[5:].rsplit("/", 1)
        return _num(((rec.get("mechanism") or {}).get(mkey) or {}).get(stat))
    if key == "applied/value":
        return _num((rec.get("applied") or {}).get("value"))
    return _num((rec.get("metrics") or {}).get(key))
