"""Small-sample statistics for the matrix: Student-t confidence intervals, paired differences and a
seeded bootstrap, in NumPy only (no SciPy).

The Student t quantile is computed exactly (to ~1e-10) for any degrees of freedom from the
regularized incomplete beta function:

    P(T <= t) = 1 - I_{df / (df + t^2)}(df / 2, 1 / 2) / 2        for t >= 0,

with ``I`` evaluated by its continued fraction (modified Lentz) and the quantile found by
bisection. References: Abramowitz & Stegun 26.7.1 and 26.5.8; Press et al., *Numerical Recipes*,
section 6.4.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function ``I_x(a, b)`` for ``a, b > 0``, ``0 <= x <= 1``."""
    if not (a > 0 and b > 0):
        raise ValueError(f"betainc needs a, b > 0, got a={a}, b={b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc needs 0 <= x <= 1, got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """``P(T <= t)`` for Student's t with ``df > 0`` degrees of freedom."""
    if not df > 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (``t_{p, df}``).

    Example:
      >>> round(t_quantile(0.975, 4), 3)
      2.776
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if not df > 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


@dataclasses.dataclass(frozen=True)
class Summary:
    """Mean of ``n`` values with the sample std (ddof=1) and a Student-t CI of the mean.

    ``std``, ``half_width``, ``lo`` and ``hi`` are NaN for ``n < 2``; everything is NaN for n = 0.
    """

    n: int
    mean: float
    std: float
    half_width: float
    lo: float
    hi: float
    confidence: float = 0.95

    def excludes_zero(self) -> bool:
        """True when the CI is defined and does not contain 0 (a significant difference)."""
        return self.n >= 2 and (self.lo > 0.0 or self.hi < 0.0)


def _finite(values: Iterable[Any]) -> np.ndarray:
    arr = np.asarray([float(v) for v in values], dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"values must be finite, got {arr.tolist()}")
    return arr


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> Summary:
    """Mean, sample std and the t confidence interval ``mean +- t_{(1+c)/2, n-1} s / sqrt(n)``.

    Example:
      >>> s = mean_ci([1.0, 2.0, 3.0]); round(s.half_width, 4)   # 4.303 * 1 / sqrt(3)
      2.4841
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    x = _finite(values)
    n = int(x.size)
    nan = float("nan")
    if n == 0:
        return Summary(0, nan, nan, nan, nan, nan, confidence)
    mean = float(x.mean())
    if n == 1:
        return Summary(1, mean, nan, nan, nan, nan, confidence)
    std = float(x.std(ddof=1))
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * std / math.sqrt(n)
    return Summary(n, mean, std, half, mean - half, mean + half, confidence)


def bootstrap_ci(values: Iterable[float], confidence: float = 0.95, *, n_resamples: int = 10000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean, seeded (same inputs, same interval).

    With very few values (e.g. 3 seeds) it is narrower than the t interval: it cannot see variance
    the sample does not show. Report it as an alternative, not instead. NaN for ``n < 2``.
    """
    x = _finite(values)
    if x.size < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(int(n_resamples), x.size))
    means = x[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """``treatment - baseline`` of one metric for one format, paired on the seed.

    Attributes:
      format, treatment, baseline, metric: what was compared.
      seeds: the seeds present (and finite) in both arms.
      diffs: the per-seed differences, in ``seeds`` order.
      summary: `Summary` of ``diffs`` (t CI).
      bootstrap: ``(lo, hi)`` percentile bootstrap CI of the mean difference.
    """

    format: str
    treatment: str
    baseline: str
    metric: str
    seeds: tuple[int, ...]
    diffs: tuple[float, ...]
    summary: Summary
    bootstrap: tuple[float, float]

    @property
    def significant(self) -> bool:
        """The t CI excludes 0 (False with fewer than two pairs)."""
        return self.summary.excludes_zero()


def _value(run: Any, metric: str) -> float | None:
    v = run.get(metric) if hasattr(run, "get") else getattr(run, metric, None)
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def paired_differences(runs: Sequence[Any], metric: str, treatment: str, *,
                       baseline: str = "adamw", confidence: float = 0.95,
                       n_resamples: int = 10000, seed: int = 0) -> list[PairedDifference]:
    """Per format: ``metric(treatment, seed) - metric(baseline, seed)`` over the shared seeds.

    Args:
      runs: records with ``format``, ``optimizer``, ``seed`` attributes and ``get(metric)``
        (`altgrad_jax.analysis.results.Run`); a run whose metric is missing or not finite (a
        diverged or unfinished run) drops its pair.
      metric: e.g. ``"test/micro_f1"``.
      treatment, baseline: optimizer preset names.
      confidence, n_resamples, seed: of the t and bootstrap intervals.

    Returns:
      One `PairedDifference` per format with at least one pair, sorted by mean difference,
      largest first.
    """
    table: dict[tuple[str, str], dict[int, float]] = {}
    for r in runs:
        v = _value(r, metric)
        if v is not None and r.optimizer in (treatment, baseline):
            table.setdefault((r.format, r.optimizer), {})[int(r.seed)] = v
    formats = sorted({f for f, _ in table})
    out = []
    for f in formats:
        t, b = table.get((f, treatment), {}), table.get((f, baseline), {})
        seeds = tuple(sorted(set(t) & set(b)))
        if not seeds:
            continue
        diffs = tuple(t[s] - b[s] for s in seeds)
        out.append(PairedDifference(
            format=f, treatment=treatment, baseline=baseline, metric=metric, seeds=seeds,
            diffs=diffs, summary=mean_ci(diffs, confidence),
            bootstrap=bootstrap_ci(diffs, confidence, n_resamples=n_resamples, seed=seed)))
    out.sort(key=lambda d: -d.summary.mean)
    return out


def cell_summaries(runs: Sequence[Any], metric: str,
                   confidence: float = 0.95) -> dict[tuple[str, str], Summary]:
    """``{(format, optimizer): Summary}`` of ``metric`` over the seeds with a finite value."""
    groups: dict[tuple[str, str], list[float]] = {}
    for r in runs:
        groups.setdefault((r.format, r.optimizer), [])
        v = _value(r, metric)
        if v is not None:
            groups[(r.format, r.optimizer)].append(v)
    return {k: mean_ci(v, confidence) for k, v in groups.items()}
