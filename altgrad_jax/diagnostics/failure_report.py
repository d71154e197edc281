"""A markdown failure report for a run that stopped (NaN, collapse, no fallback left). I/O only."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _float(v: Any) -> float:
    try:
        return float(np.asarray(v))
    except (TypeError, ValueError):
        return math.nan


def worst_layers(metrics: Mapping[str, Any], key_prefix: str, k: int = 5
                 ) -> list[tuple[str, float]]:
    """The ``k`` layers with the largest value under ``key_prefix`` (NaN counts as worst).

    ``key_prefix`` is a per-layer family such as ``"diag/stall_ratio/"`` or
    ``"quant/underflow/"``; the returned names are the layer paths (the key without the prefix).

    Example:
      >>> worst_layers({"diag/stall_ratio/a": 0.1, "diag/stall_ratio/b": 0.9,
      ...               "diag/stall_ratio": 0.5}, "diag/stall_ratio/", k=1)
      [('b', 0.9)]
    """
    if not key_prefix.endswith("/"):
        key_prefix += "/"
    rows = [(key[len(key_prefix):], _float(v)) for key, v in metrics.items()
            if key.startswith(key_prefix) and len(key) > len(key_prefix)]
    rows.sort(key=lambda kv: (not math.isnan(kv[1]), -kv[1] if not math.isnan(kv[1]) else 0.0))
    return rows[:k]


def _fmt(v: float) -> str:
    return f"{v:.6g}"


def write_failure_report(path: str, *, format_name: str | None, step: int, reason: str,
                         last_metrics: Mapping[str, Any], config_dict: Mapping[str, Any],
                         worst_layers: Sequence[Any] = ()) -> str:
    """Writes a markdown failure report and returns its path.

    Sections: the format, step and reason; the layers with the worst stall/underflow (as given, e.g.
    from `worst_layers`); the last diagnostics as a table (key, value); the config as JSON.

    Args:
      path: the output file (parent directories are created).
      format_name: the format the run failed in (None = float32).
      step: the step it failed at.
      reason: a short reason (e.g. ``"nan"``, ``"stall"``, ``"no fallback left after E5M2"``).
      last_metrics: the last flat metrics dict pulled to the host.
      config_dict: the run's config (e.g. ``config.to_dict()``); non-JSON values are ``str()``-ed.
      worst_layers: rows ``(name, value)`` or ``(family, name, value)`` or dicts.

    Returns:
      ``path``.
    """
    lines = [f"# Failure report: {format_name or 'float32'} at step {int(step)}", "",
             f"- **format**: {format_name or 'float32 (unquantized)'}",
             f"- **step**: {int(step)}", f"- **reason**: {reason}", ""]
    lines += ["## Worst layers", ""]
    if worst_layers:
        lines += ["| layer | value |", "|---|---|"]
        for row in worst_layers:
            if isinstance(row, Mapping):
                name = row.get("layer", row.get("name", "?"))
                val = row.get("value", math.nan)
                if "key" in row:
                    name = f"{row['key']} {name}"
            elif len(row) == 3:
                name, val = f"{row[0]} {row[1]}", row[2]
            else:
                name, val = row[0], row[1]
            lines.append(f"| `{name}` | {_fmt(_float(val))} |")
    else:
        lines.append("(none recorded)")
    lines += ["", "## Last diagnostics", ""]
    if last_metrics:
        lines += ["| key | value |", "|---|---|"]
        lines += [f"| `{k}` | {_fmt(_float(v))} |" for k, v in sorted(last_metrics.items())]
    else:
        lines.append("(none recorded)")
    lines += ["", "## Config", "", "```json",
              json.dumps(dict(config_dict), indent=2, sort_keys=True, default=str), "```", ""]
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return path
