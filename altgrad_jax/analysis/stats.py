"""The pre-registered analysis of the primary contrast (statsmodels / SciPy; fixed before the runs).

Primary metric: test macro-F1 at the validation-tuned threshold (``test_tuned/macro_f1``);
secondary: tuned micro-F1 and the threshold-free micro PR-AUC. One pooled OLS model is fitted on
the regime-(b) primary cells (formats x {adamw_rtn, adamw_sr, ulp_sr} x the test seeds):

    y = mu + format_f + arm_a + (format x arm)_fa + seed_s + e,      e ~ N(0, sigma^2)

(``y ~ C(format) * C(arm) + C(seed)``; seeds are paired across cells: same init and data order).
From it, per format, the contrasts ``ulp_sr - adamw_sr`` (the geometry benefit beyond unbiased
rounding) and ``ulp_sr - adamw_rtn``, each a linear combination ``L beta`` with its t interval
on the model's residual degrees of freedom; p-values Holm-corrected across formats (`holm`).
"Format X benefits most" is claimed only when the interval of (best - runner-up) excludes 0;
`winner_probability` is the residual-bootstrap probability (seeded) that the observed winner
stays the winner; `exponent_trend` is the least-squares slope of the per-format benefit on the
exponent bits, again a linear combination of the same coefficients.

Checks of the model, reported beside it (`model_checks`, `format_alone_contrasts`,
`welch_combination`, `paired_differences`, `minimum_detectable_effect`): the residual spread per
format (Brown-Forsythe), the residuals' normality (Shapiro-Wilk), each format's contrast from its
own model and variance (and their exponent-bit slope on Welch-Satterthwaite df), from its own
seeds alone (paired by seed, no model), and the smallest benefit the design detects with 80%
power.

References: Holm, "A simple sequentially rejective multiple test procedure", Scand. J. Stat.
1979; Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993 (residual bootstrap, ch. 9);
Brown & Forsythe, "Robust tests for the equality of variances", JASA 1974; Cohen, *Statistical
Power Analysis for the Behavioral Sciences*, 1988 (power of the t test, noncentral t).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import patsy
import scipy.optimize
import scipy.stats
import statsmodels.api as sm
from statsmodels.stats.multitest import multipletests

from altgrad_jax.formats import get_format

FORMULA = "y ~ C(format) * C(arm) + C(seed)"
PRIMARY_STAGE = "primary"  # the study stage whose cells the pooled model is fitted on


@dataclasses.dataclass(frozen=True)
class Summary:
    """Mean of ``n`` values with the sample std (ddof=1) and a Student-t CI of the mean (NaN for
    n < 2; everything NaN for n = 0)."""

    n: int
    mean: float
    std: float
    lo: float
    hi: float

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2.0

    @property
    def p(self) -> float:
        """Two-sided p of the one-sample t test of mean 0: ``t = mean / (std / sqrt(n))`` on
        ``n - 1`` df (for a `paired_differences` summary: the paired t test). NaN below n = 2
        or with no spread."""
        if self.n < 2 or not self.std > 0:
            return float("nan")
        t = self.mean / (self.std / math.sqrt(self.n))
        return float(2.0 * scipy.stats.t.sf(abs(t), self.n - 1))


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> Summary:
    """Mean and the t interval ``mean +- t_{(1+c)/2, n-1} s / sqrt(n)`` (scipy.stats.t).

    Example:
      >>> s = mean_ci([1.0, 2.0, 3.0]); round(s.half_width, 4)   # 4.303 * 1 / sqrt(3)
      2.4841
    """
    x = np.asarray([float(v) for v in values if v is not None and math.isfinite(v)])
    nan = float("nan")
    if x.size == 0:
        return Summary(0, nan, nan, nan, nan)
    if x.size == 1:
        return Summary(1, float(x[0]), nan, nan, nan)
    std = float(x.std(ddof=1))
    half = float(scipy.stats.t.ppf(0.5 + confidence / 2.0, x.size - 1)) * std / math.sqrt(x.size)
    return Summary(int(x.size), float(x.mean()), std, float(x.mean()) - half,
                   float(x.mean()) + half)


@dataclasses.dataclass(frozen=True)
class Contrast:
    """One linear combination of the pooled model's coefficients.

    Attributes:
      label: e.g. ``"E5M2: ulp_sr - adamw_sr"``.
      estimate, se, lo, hi, p: the estimate, its standard error, the t interval and the
        two-sided p-value on the residual degrees of freedom.
      p_holm: the Holm-adjusted p-value within its family (NaN when not adjusted).
      df: the degrees of freedom of its t distribution.
    """

    label: str
    estimate: float
    se: float
    lo: float
    hi: float
    p: float
    p_holm: float = float("nan")
    df: float = float("nan")

    @property
    def excludes_zero(self) -> bool:
        return self.lo > 0.0 or self.hi < 0.0


@dataclasses.dataclass
class PooledFit:
    """The fitted pooled model: ``res`` (statsmodels OLS results), its patsy ``design_info``, the
    formats, arms and seeds it covers, and ``frame``, the (format, arm, seed, y) rows it was
    fitted on, in the order of ``res.resid``."""

    res: object
    design_info: object
    formats: list
    arms: list
    seeds: list
    confidence: float = 0.95
    frame: pd.DataFrame | None = None

    _rows: dict = dataclasses.field(default_factory=dict, repr=False)

    def row(self, fmt: str, arm: str) -> np.ndarray:
        """The design row of cell (fmt, arm) at the first seed (seed effects cancel in contrasts)."""
        if not self._rows:  # every cell in one patsy call
            cells = [(f, a) for f in self.formats for a in self.arms]
            frame = pd.DataFrame({"format": [f for f, _ in cells], "arm": [a for _, a in cells],
                                  "seed": [self.seeds[0]] * len(cells), "y": 0.0})
            (x,) = patsy.build_design_matrices([self.design_info], frame)
            self._rows.update(zip(cells, np.asarray(x)))
        return self._rows[(fmt, arm)]

    def benefit_vector(self, fmt: str, treatment: str, control: str) -> np.ndarray:
        return self.row(fmt, treatment) - self.row(fmt, control)

    def contrast(self, L: np.ndarray, label: str) -> Contrast:
        return _t_contrast(self.res, L, label, self.confidence)


def _t_contrast(res, L: np.ndarray, label: str, confidence: float) -> Contrast:
    """``L beta`` of a fitted statsmodels OLS ``res``: its t test on the residual df."""
    t = res.t_test(np.atleast_2d(L))
    lo, hi = np.asarray(t.conf_int(alpha=1.0 - confidence))[0]
    return Contrast(label, float(np.squeeze(t.effect)), float(np.squeeze(t.sd)), float(lo),
                    float(hi), float(np.squeeze(t.pvalue)), df=float(res.df_resid))


def primary_frame(records: Iterable[dict], metric: str, arms: Sequence[str],
                  exclude_seeds: Sequence[int] = (0,), stage: str | None = PRIMARY_STAGE
                  ) -> pd.DataFrame:
    """(format, arm, seed, y) of the completed, non-tuning records of ``arms`` in ``stage`` (the
    primary contrast; BF16 references and the E1M6 check live in other stages; None = any)."""
    rows = [{"format": r["format"], "arm": r["arm"], "seed": int(r["seed"]),
             "y": float(r["metrics"][metric])}
            for r in records if is_primary_record(r, metric, arms, exclude_seeds, stage)]
    return pd.DataFrame(rows, columns=["format", "arm", "seed", "y"])


def is_primary_record(r: dict, metric: str, arms: Sequence[str],
                      exclude_seeds: Sequence[int] = (0,),
                      stage: str | None = PRIMARY_STAGE) -> bool:
    """Whether record ``r`` enters the primary analysis of ``metric`` (`primary_frame`'s rows):
    completed, not a tuning run, an arm of ``arms`` in ``stage``, a quantized format, a test
    seed, and a finite value of ``metric``."""
    v = (r.get("metrics") or {}).get(metric)
    return (r.get("status") == "completed" and r.get("factor") is None and r["arm"] in arms
            and (stage is None or r.get("stage") == stage)
            and r["format"] != "none" and int(r["seed"]) not in exclude_seeds
            and isinstance(v, (int, float)) and math.isfinite(v))


def fit_pooled(df: pd.DataFrame, arms: Sequence[str], *, formats: Sequence[str] | None = None,
               confidence: float = 0.95) -> PooledFit | None:
    """OLS ``y ~ C(format) * C(arm) + C(seed)`` on the formats that have every arm observed.

    Returns None when fewer than two such formats exist or no residual degree of freedom is
    left (nothing can be estimated yet).
    """
    counts = df.groupby(["format", "arm"]).size()
    order = list(formats) if formats is not None else sorted(df["format"].unique())
    keep = [f for f in order if all(counts.get((f, a), 0) > 0 for a in arms)]
    sub = df[df["format"].isin(keep) & df["arm"].isin(arms)]
    if len(keep) < 2 or sub["seed"].nunique() < 1:
        return None
    n_params = len(keep) * len(arms) + sub["seed"].nunique() - 1
    if len(sub) - n_params < 1:
        return None
    y, X = patsy.dmatrices(FORMULA, sub, return_type="dataframe")
    res = sm.OLS(y, X).fit()
    return PooledFit(res, X.design_info, keep, list(arms), sorted(sub["seed"].unique()), confidence,
                     frame=sub.loc[X.index].reset_index(drop=True))


def holm_p(ps: Sequence[float], alpha: float = 0.05) -> list[float]:
    """Holm step-down adjusted p-values of the family ``ps`` (statsmodels' ``multipletests``);
    a NaN p stays NaN and is not counted in the family."""
    idx = [i for i, p in enumerate(ps) if math.isfinite(p)]
    out = [float("nan")] * len(ps)
    if idx:
        _, adj, _, _ = multipletests([ps[i] for i in idx], alpha=alpha, method="holm")
        for i, a in zip(idx, adj):
            out[i] = float(a)
    return out


def holm(contrasts: Sequence[Contrast], alpha: float = 0.05) -> list[Contrast]:
    """The contrasts with ``p_holm`` set (Holm step-down across the family, `holm_p`)."""
    adj = holm_p([c.p for c in contrasts], alpha)
    return [dataclasses.replace(c, p_holm=a) for c, a in zip(contrasts, adj)]


def format_contrasts(fit: PooledFit, treatment: str, control: str) -> list[Contrast]:
    """Per format ``treatment - control`` (Holm-adjusted across the fit's formats)."""
    return holm([fit.contrast(fit.benefit_vector(f, treatment, control),
                              f"{f}: {treatment} - {control}") for f in fit.formats])


def by_format(contrasts: Sequence[Contrast]) -> dict[str, Contrast]:
    """`format_contrasts`' output keyed by format (the part of each label before ``":"``)."""
    return {c.label.split(":")[0]: c for c in contrasts}


def best_vs_runner_up(fit: PooledFit, treatment: str, control: str) -> tuple[str, str, Contrast]:
    """(best format, runner-up, contrast of their benefits) by the estimated benefit."""
    est = {f: float(np.asarray(fit.res.params) @ fit.benefit_vector(f, treatment, control))
           for f in fit.formats}
    best, second = sorted(est, key=est.get, reverse=True)[:2]
    L = fit.benefit_vector(best, treatment, control) - fit.benefit_vector(second, treatment,
                                                                          control)
    return best, second, fit.contrast(L, f"{best} - {second}: benefit of {treatment} over "
                                         f"{control}")


def bootstrap_residuals(resid: np.ndarray, n_boot: int, rng: np.random.Generator,
                        strata: Sequence | None = None) -> np.ndarray:
    """``(n_boot, n)`` resampled residuals: each row draws, with replacement, observation i's
    residual from all residuals (``strata`` None) or from those of i's own stratum only."""
    resid = np.asarray(resid, dtype=float)
    if strata is None:
        return rng.choice(resid, size=(n_boot, len(resid)), replace=True)
    strata = np.asarray(strata)
    out = np.empty((n_boot, len(resid)))
    for g in dict.fromkeys(strata.tolist()):
        idx = np.flatnonzero(strata == g)
        out[:, idx] = rng.choice(resid[idx], size=(n_boot, len(idx)), replace=True)
    return out


def winner_probability(fit: PooledFit, treatment: str, control: str, *, n_boot: int = 2000,
                       seed: int = 0, within_format: bool = False) -> dict[str, float]:
    """``{format: P(format has the largest benefit)}`` under a seeded residual bootstrap.

    Residuals (rescaled by ``sqrt(n / df_resid)``) are resampled with replacement, added to the
    fitted values and the model refitted by least squares; the winner is counted per resample.
    With ``within_format`` each observation's residual is drawn from its own format's residuals
    only (`bootstrap_residuals`), so a format's own spread stays its own (the check for when the
    residual spread differs between formats).
    """
    X = np.asarray(fit.res.model.exog)
    fitted = np.asarray(fit.res.fittedvalues)
    resid = np.asarray(fit.res.resid) * math.sqrt(len(fitted) / max(fit.res.df_resid, 1.0))
    rng = np.random.default_rng(seed)
    strata = fit.frame["format"].to_numpy() if within_format else None
    ystar = fitted[None, :] + bootstrap_residuals(resid, n_boot, rng, strata)
    betas = ystar @ np.linalg.pinv(X).T
    Lmat = np.stack([fit.benefit_vector(f, treatment, control) for f in fit.formats])
    wins = np.argmax(betas @ Lmat.T, axis=1)
    return {f: float(np.mean(wins == i)) for i, f in enumerate(fit.formats)}


def trend_weights(formats: Sequence[str]) -> np.ndarray | None:
    """Weights ``w`` with ``sum_f w_f b_f`` = the least-squares slope of ``b`` on the formats'
    exponent bits (None when every format has the same exponent bits)."""
    e = np.asarray([get_format(f).exponent_bits for f in formats], dtype=float)
    if np.ptp(e) == 0:
        return None
    return (e - e.mean()) / np.sum((e - e.mean()) ** 2)


def exponent_trend(fit: PooledFit, treatment: str, control: str) -> Contrast:
    """Least-squares slope of the benefit on the formats' exponent bits (per exponent bit)."""
    w = trend_weights(fit.formats)
    if w is None:
        nan = float("nan")
        return Contrast("slope on exponent bits", nan, nan, nan, nan, nan)
    L = sum(wi * fit.benefit_vector(f, treatment, control) for wi, f in zip(w, fit.formats))
    return fit.contrast(L, f"slope of ({treatment} - {control}) on exponent bits")


def format_alone_contrasts(df: pd.DataFrame, treatment: str, control: str,
                           formats: Sequence[str], *, confidence: float = 0.95
                           ) -> list[Contrast]:
    """Per format, ``treatment - control`` from that format's own model ``y ~ C(arm) + C(seed)``
    (its arms and seeds only: its own residual variance, t on its own degrees of freedom, 4 with
    three arms x three seeds); Holm-adjusted across the formats.

    The sensitivity check for the pooled model's one assumption that the data can refute: a
    residual spread equal in every format. Heteroscedasticity-consistent (sandwich, HC0-HC3)
    errors on the pooled fit were considered and not used: with three observations per cell
    each format's variance rests on a few residuals while the t reference keeps the pooled
    model's degrees of freedom, so their intervals are too narrow; this model uses the exact t
    on the format's own degrees of freedom instead.
    """
    out = []
    for f in formats:
        sub = df[df["format"] == f]
        if sub["arm"].nunique() < 2 or not {treatment, control} <= set(sub["arm"]):
            continue
        y, X = patsy.dmatrices(f"y ~ C(arm, Treatment(reference={control!r})) + C(seed)", sub,
                               return_type="dataframe")
        res = sm.OLS(y, X).fit()
        if res.df_resid < 1:
            continue
        L = np.zeros(X.shape[1])
        L[list(X.columns).index(f"C(arm, Treatment(reference={control!r}))[T.{treatment}]")] = 1
        out.append(_t_contrast(res, L, f"{f}: {treatment} - {control}", confidence))
    return holm(out)


def welch_combination(contrasts: Sequence[Contrast], weights: Sequence[float], label: str, *,
                      confidence: float = 0.95) -> Contrast:
    """``sum_i w_i c_i`` of independent contrasts (each with its own variance and df), with the
    Welch-Satterthwaite degrees of freedom

        var = sum_i w_i^2 se_i^2,      df = var^2 / sum_i (w_i^2 se_i^2)^2 / df_i,

    its t interval and two-sided p (e.g. the exponent-bit slope of `format_alone_contrasts`).

    References: Satterthwaite, "An approximate distribution of estimates of variance
    components", Biometrics Bulletin 1946; Welch, Biometrika 1947.
    """
    w = np.asarray(weights, dtype=float)
    se2 = np.asarray([c.se ** 2 for c in contrasts])
    dfs = np.asarray([c.df for c in contrasts])
    est = float(w @ np.asarray([c.estimate for c in contrasts]))
    var = float(np.sum(w ** 2 * se2))
    if not var > 0:  # every weighted contrast exact (or NaN): no interval
        nan = float("nan")
        return Contrast(label, est, math.sqrt(var) if var == 0 else nan, nan, nan, nan, df=nan)
    dof = var ** 2 / float(np.sum((w ** 2 * se2) ** 2 / dfs))
    se = math.sqrt(var)
    half = float(scipy.stats.t.ppf(0.5 + confidence / 2.0, dof)) * se
    p = float(2.0 * scipy.stats.t.sf(abs(est) / se, dof))
    return Contrast(label, est, se, est - half, est + half, p, df=dof)


def gap_closed(cell_means: dict, fp32: float, baseline: str = "adamw_rtn") -> dict:
    """``{(format, arm): G}``, ``G = (arm - baseline) / (fp32 - baseline)`` on cell means (NaN
    where the format's baseline is missing or equals FP32)."""
    out = {}
    for (f, a), m in cell_means.items():
        b = cell_means.get((f, baseline))
        den = None if b is None or fp32 is None else fp32 - b
        out[(f, a)] = (m - b) / den if den else float("nan")
    return out


def cell_means(df: pd.DataFrame) -> dict:
    """``{(format, arm): mean y}``."""
    return {k: float(v) for k, v in df.groupby(["format", "arm"])["y"].mean().items()}


@dataclasses.dataclass(frozen=True)
class Association:
    """Spearman rank correlation across formats (descriptive: one point per format).

    ``constant`` is True when either side takes one value on every key: nothing is ranked and
    ``rho``, ``p`` are NaN (e.g. the kernel coordinates updated, the same on every format)."""

    rho: float
    p: float
    n: int
    constant: bool = False


def rank_association(x: dict, y: dict, *, min_n: int = 4) -> Association | None:
    """Spearman's rho (two-sided p, SciPy) between ``x[f]`` and ``y[f]`` over the keys with a
    finite value in both; None with fewer than ``min_n`` such keys (a rank correlation of
    three points has p >= 0.33 and says nothing); ``constant=True`` with NaN rho when either
    side is constant over them.

    Used for the mechanism: does the per-format benefit rank with a mechanism figure of the
    control (e.g. the fraction of its updates below half a grid step)? With 7 formats this is
    descriptive, not a test of the primary hypothesis.
    """
    keys = [k for k in x if k in y and x[k] is not None and y[k] is not None
            and math.isfinite(x[k]) and math.isfinite(y[k])]
    if len(keys) < min_n:
        return None
    if len({x[k] for k in keys}) < 2 or len({y[k] for k in keys}) < 2:
        return Association(float("nan"), float("nan"), len(keys), constant=True)
    res = scipy.stats.spearmanr([x[k] for k in keys], [y[k] for k in keys])
    return Association(float(res.statistic), float(res.pvalue), len(keys))


def paired_differences(records: Iterable[dict], fmt: str, treatment: str, control: str,
                       metric: str) -> Summary:
    """`mean_ci` of ``treatment - control`` on ``fmt`` over the seeds where both arms have a
    finite ``metric`` (paired by seed: same init and data order; this format's seeds alone, no
    variance pooled across formats)."""
    by_seed: dict = {}
    for r in records:
        v = (r.get("metrics") or {}).get(metric)
        if r["format"] == fmt and r["arm"] in (treatment, control) and isinstance(v, (int, float)):
            by_seed.setdefault(int(r["seed"]), {})[r["arm"]] = float(v)
    return mean_ci([d[treatment] - d[control] for _, d in sorted(by_seed.items())
                    if len(d) == 2])


def minimum_detectable_effect(se: float, df: float, *, alpha: float = 0.05,
                              power: float = 0.8) -> float:
    """The smallest true effect a two-sided t test at level ``alpha`` detects with probability
    ``power``, for an estimate with standard error ``se`` on ``df`` degrees of freedom.

    Solves ``P(|T| > t_{1-alpha/2, df}) = power`` for ``delta``, ``T ~ nct(df, delta / se)``
    (the noncentral t; both tails counted), and returns ``delta``. NaN when ``se`` or ``df`` is
    not a positive finite number.

    Raises:
      ValueError: ``power`` not in ``(alpha, 1)``.

    Example:
      >>> round(minimum_detectable_effect(1.0, 1e6), 3)   # normal limit: 1.960 + 0.842
      2.802
    """
    if not alpha < power < 1.0:
        raise ValueError(f"power={power} must lie between alpha={alpha} and 1 (a test at level "
                         "alpha has power alpha at zero effect)")
    if not (math.isfinite(se) and se > 0 and math.isfinite(df) and df > 0):
        return float("nan")
    crit = scipy.stats.t.ppf(1.0 - alpha / 2.0, df)

    def shortfall(nc: float) -> float:
        # P(T < -crit) = P(T' > crit), T' ~ nct(df, -nc); SciPy's far tail can return NaN for
        # large nc, where the true value is below 1e-20: count it as 0.
        lower = float(np.nan_to_num(scipy.stats.nct.sf(crit, df, -nc)))
        return float(scipy.stats.nct.sf(crit, df, nc)) + lower - power

    hi = 1.0
    while shortfall(hi) < 0:  # power(0) = alpha < power; widen until the root is bracketed
        hi *= 2.0
    return float(scipy.optimize.brentq(shortfall, 0.0, hi, xtol=1e-10)) * se


@dataclasses.dataclass(frozen=True)
class ModelChecks:
    """Checks of the pooled model's assumptions on its residuals.

    Attributes:
      spread_p: Brown-Forsythe p (Levene's test about the median, SciPy) that the residual
        variance is the same in every format (the pooled model assumes it is).
      normal_p: Shapiro-Wilk p that the residuals are normal (the t intervals assume it).
      resid_sd: the residual standard deviation, ``sqrt(SSR / df_resid)``.
      sd_by_format: the same per format, ``sqrt(SSR_f / n_f * n / df_resid)`` (the pooled
        correction for the fitted parameters; their squares average to ``resid_sd**2``).
    """

    spread_p: float
    normal_p: float
    resid_sd: float
    sd_by_format: dict


def model_checks(fit: PooledFit) -> ModelChecks:
    """`ModelChecks` of ``fit`` (descriptive: the residuals of one model, not a new test of the
    hypothesis)."""
    resid = np.asarray(fit.res.resid, dtype=float)
    fmt = np.asarray(fit.frame["format"])
    groups = [resid[fmt == f] for f in fit.formats]
    spread = scipy.stats.levene(*groups, center="median").pvalue if len(groups) > 1 else math.nan
    normal = scipy.stats.shapiro(resid).pvalue if resid.size >= 3 else math.nan
    return ModelChecks(float(spread), float(normal), float(math.sqrt(fit.res.scale)),
                       {f: float(np.sqrt(np.mean(g ** 2) * resid.size / fit.res.df_resid))
                        for f, g in zip(fit.formats, groups)})
