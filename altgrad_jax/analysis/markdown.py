"""Markdown pieces of the study report: numbers, intervals, p-values, tables and the cell
means they hold (`mean_cell`), in one place so every section prints them the same way."""

from __future__ import annotations

import math
from collections.abc import Sequence

from altgrad_jax.analysis import stats
from altgrad_jax.analysis.records import value


FORMAT_ORDER = ("E0M7", "E1M6", "E2M5", "E3M4", "E4M3", "E5M2", "E6M1", "E7M0", "BF16", "none")


def number(v, d=4) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{v:.{d}f}"


def p_value(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3g}"


def ci(c) -> str:
    return f"{c.estimate:+.4f} [{c.lo:+.4f}, {c.hi:+.4f}]"


def p_or_dash(p: float) -> str:
    """`p_value`, or "—" for a p that was not computed (NaN)."""
    return "—" if not math.isfinite(p) else p_value(p)


def paired_ci(d: stats.Summary) -> str:
    """A paired difference's mean and t interval (`stats.paired_differences`); "—" below n = 2."""
    return "—" if d.n < 2 else f"{d.mean:+.4f} [{d.lo:+.4f}, {d.hi:+.4f}]"


def table(header: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return out + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def table_or_none(header: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
    """`table`, or one line saying there is nothing yet (no header-only tables)."""
    return table(header, rows) if rows else ["No completed cells yet."]


def format_order(values) -> list[str]:
    vals = set(values)
    return [f for f in FORMAT_ORDER if f in vals] + sorted(vals - set(FORMAT_ORDER))


def mean_cell(recs, fmt, arm, key, digits: int = 4) -> str:
    s = stats.mean_ci([v for r in recs if r["format"] == fmt and r["arm"] == arm
                       and (v := value(r, key)) is not None])
    if s.n == 0:
        return "—"
    if s.n == 1:
        return f"{s.mean:.{digits}f} (n=1)"
    return f"{s.mean:.{digits}f} ± {s.half_width:.{digits}f} (n={s.n})"
