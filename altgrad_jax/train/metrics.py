"""Multi-label classification metrics in NumPy (host side).

Everything here runs on the host on already-gathered ``[N, C]`` arrays (N examples, C labels) and is
vectorised over labels, so a full EURLEX-sized evaluation (N=6000, C=100) takes a few tens of
milliseconds. The conventions are those of scikit-learn (which is used only in the tests, never
imported here); where scikit-learn would raise, we return a documented value instead.

Conventions (identical to scikit-learn unless noted):

* Prediction: ``pred[n, c] = probs[n, c] >= threshold[c]`` (``threshold`` scalar or shape ``[C]``).
* Precision / recall / F1 use ``zero_division=0``: a ratio whose denominator is 0 is 0. Per label,
  ``F1 = 2 TP / (2 TP + FP + FN)`` (0 when the denominator is 0).

  - *micro*: TP, FP, FN summed over all N*C cells, then the ratio.
  - *macro*: unweighted mean of the per-label ratio over **all** C labels (labels without positives
    and without predictions contribute 0, as in ``sklearn.metrics.f1_score(average='macro',
    zero_division=0)``).

* ``subset_accuracy``: fraction of examples whose whole predicted label set is exactly right
  (``sklearn.metrics.accuracy_score`` on multilabel indicators).
* ``hamming_loss``: fraction of wrong cells (``sklearn.metrics.hamming_loss``).
* ROC-AUC is the tie-corrected Mann-Whitney statistic

  .. math:: \\mathrm{AUC} = \\frac{R_+ - P(P+1)/2}{P \\cdot Q}

  where :math:`R_+` is the sum of the average ranks (ties share the mean of their ranks) of the P
  positive scores among all P+Q scores. This equals the trapezoidal area under the ROC curve that
  ``sklearn.metrics.roc_auc_score`` computes.

  - ``roc_auc_micro``: the binary AUC of the flattened N*C cells (``average='micro'``); NaN if the
    flattened labels hold a single class (scikit-learn raises).
  - ``roc_auc_macro``: mean of per-label AUCs over the labels that have both classes present.
    scikit-learn's ``average='macro'`` raises as soon as one label is single-class; we skip such
    labels instead, and report how many were scored in ``num_labels_scored_auc``. NaN if none.

* Average precision (AP) is the step-wise area under the precision-recall curve,
  :math:`\\mathrm{AP} = \\sum_k (R_k - R_{k-1}) P_k` over the distinct score thresholds in
  decreasing order (no interpolation), i.e. ``sklearn.metrics.average_precision_score``.

  - ``pr_auc_micro``: AP of the flattened cells (``average='micro'``); NaN if there is no positive.
  - ``pr_auc_macro``: mean of per-label AP over the same labels as ``roc_auc_macro`` (both classes
    present). scikit-learn would score a label with no positives as 0 (with a warning) and one with
    only positives as 1; we exclude both, so macro ROC-AUC and macro AP average over the same set.

References:
  Mann & Whitney, *On a test of whether one of two random variables is stochastically larger than
  the other*, 1947. Manning, Raghavan & Schütze, *Introduction to Information Retrieval*, ch. 8,
  2008.
"""

from __future__ import annotations

import numpy as np

__all__ = ["multilabel_metrics", "tune_threshold", "METRIC_KEYS"]

METRIC_KEYS = (
    "micro_f1",
    "macro_f1",
    "micro_precision",
    "micro_recall",
    "macro_precision",
    "macro_recall",
    "subset_accuracy",
    "hamming_loss",
    "roc_auc_micro",
    "roc_auc_macro",
    "pr_auc_micro",
    "pr_auc_macro",
    "num_labels_scored_auc",
)


def _check_inputs(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 2:
        raise ValueError(f"probs must have shape [N, C], got shape {probs.shape}.")
    if labels.shape != probs.shape:
        raise ValueError(
            f"labels must have the shape of probs {probs.shape}, got shape {labels.shape}."
        )
    if probs.shape[0] == 0:
        raise ValueError("multilabel metrics need at least one example (N >= 1), got N=0.")
    if not np.all((labels == 0) | (labels == 1)):
        raise ValueError("labels must be a {0, 1} indicator matrix.")
    return probs, labels.astype(bool)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` with 0 where ``den == 0`` (scikit-learn's ``zero_division=0``)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den != 0)


def _counts(pred: np.ndarray, labels: np.ndarray, axis=None):
    tp = np.sum(pred & labels, axis=axis)
    fp = np.sum(pred & ~labels, axis=axis)
    fn = np.sum(~pred & labels, axis=axis)
    return tp, fp, fn


def _sorted_columns(scores: np.ndarray, labels: np.ndarray):
    """Sorts every column by decreasing score; returns sorted scores, labels, and tie-group bounds.

    For sorted position ``i`` (0-based) of a column, ``first[i]`` / ``last[i]`` are the first / last
    positions of the group of scores equal to ``scores_sorted[i]``.
    """
    n = scores.shape[0]
    order = np.argsort(-scores, axis=0, kind="stable")
    s = np.take_along_axis(scores, order, axis=0)
    y = np.take_along_axis(labels, order, axis=0)
    idx = np.broadcast_to(np.arange(n)[:, None], s.shape)
    differs = s[1:] != s[:-1]  # [n-1, C]; True where a new tie group starts at i+1
    ones = np.ones((1, s.shape[1]), dtype=bool)
    is_first = np.concatenate([ones, differs], axis=0)
    is_last = np.concatenate([differs, ones], axis=0)
    first = np.maximum.accumulate(np.where(is_first, idx, 0), axis=0)
    last = np.flip(np.minimum.accumulate(np.flip(np.where(is_last, idx, n), 0), axis=0), 0)
    return y, first, last


def _auc_and_ap_columns(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column ROC-AUC and average precision, sharing one sort.

    Returns:
      ``(auc, ap)``, each ``[C]``: the tie-corrected Mann-Whitney AUC (NaN for single-class columns)
      and the average precision (NaN for columns without positives).
    """
    n = scores.shape[0]
    y, first, last = _sorted_columns(scores, labels)
    num_pos = np.sum(y, axis=0).astype(np.float64)
    num_neg = n - num_pos

    # ROC-AUC. Sorted by decreasing score, the ascending rank (1-based) of position i is n - i; the
    # average rank of a tie group spanning positions [first, last] is n - (first + last) / 2.
    avg_rank = n - 0.5 * (first + last)
    rank_sum_pos = np.sum(np.where(y, avg_rank, 0.0), axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (rank_sum_pos - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg)
    auc = np.where((num_pos > 0) & (num_neg > 0), auc, np.nan)

    # Average precision. Each positive adds 1/P recall at the threshold of its tie group, where the
    # precision is the one at the group's last position: AP = (1/P) sum_{i positive} prec[last(i)].
    seen = np.arange(1, n + 1, dtype=np.float64)[:, None]
    precision = np.cumsum(y, axis=0, dtype=np.float64) / seen
    prec_at_group = np.take_along_axis(precision, last, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ap = np.sum(np.where(y, prec_at_group, 0.0), axis=0) / num_pos
    ap = np.where(num_pos > 0, ap, np.nan)
    return auc, ap


def multilabel_metrics(
    probs: np.ndarray,
    labels: np.ndarray,
    threshold: float | np.ndarray = 0.5,
) -> dict[str, float]:
    """Threshold and ranking metrics for multi-label classification, equal to scikit-learn's.

    See the module docstring for the exact conventions (``zero_division=0``; macro ROC-AUC and
    macro AP over the labels with both classes present; NaN where a metric is undefined).

    Args:
      probs: ``[N, C]`` scores (probabilities or logits; only their order matters for the AUCs).
      labels: ``[N, C]`` {0, 1} (or bool) indicator matrix.
      threshold: a scalar or a ``[C]`` array; a label is predicted where ``probs >= threshold``.

    Returns:
      A dict of Python floats with the keys in :data:`METRIC_KEYS`: ``micro_f1``, ``macro_f1``,
      ``micro_precision``, ``micro_recall``, ``macro_precision``, ``macro_recall``,
      ``subset_accuracy``, ``hamming_loss``, ``roc_auc_micro``, ``roc_auc_macro``, ``pr_auc_micro``,
      ``pr_auc_macro`` and ``num_labels_scored_auc`` (a count, as a float).

    Raises:
      ValueError: on shape mismatch, ``N == 0``, non-binary labels or a bad threshold shape.

    Example:
      >>> import numpy as np
      >>> probs = np.array([[0.9, 0.2], [0.4, 0.7], [0.6, 0.1]])
      >>> labels = np.array([[1, 0], [0, 1], [1, 1]])
      >>> m = multilabel_metrics(probs, labels)
      >>> round(m["micro_f1"], 4), m["subset_accuracy"], m["roc_auc_macro"]
      (0.8571, 0.6666666666666666, 0.75)
    """
    probs, labels = _check_inputs(probs, labels)
    n, c = probs.shape
    threshold = np.asarray(threshold, dtype=np.float64)
    if threshold.ndim > 1 or (threshold.ndim == 1 and threshold.shape[0] != c):
        raise ValueError(
            f"threshold must be a scalar or have shape [{c}], got shape {threshold.shape}."
        )
    pred = probs >= threshold

    tp, fp, fn = _counts(pred, labels, axis=0)  # per label, [C]
    TP, FP, FN = tp.sum(), fp.sum(), fn.sum()
    out = {
        "micro_f1": _safe_div(2 * TP, 2 * TP + FP + FN),
        "macro_f1": _safe_div(2 * tp, 2 * tp + fp + fn).mean(),
        "micro_precision": _safe_div(TP, TP + FP),
        "micro_recall": _safe_div(TP, TP + FN),
        "macro_precision": _safe_div(tp, tp + fp).mean(),
        "macro_recall": _safe_div(tp, tp + fn).mean(),
        "subset_accuracy": np.mean(np.all(pred == labels, axis=1)),
        "hamming_loss": (FP + FN) / (n * c),
    }

    auc, ap = _auc_and_ap_columns(probs, labels)
    scored = ~np.isnan(auc)  # both classes present
    num_scored = int(scored.sum())
    flat_p, flat_y = probs.reshape(-1, 1), labels.reshape(-1, 1)
    auc_micro, ap_micro = _auc_and_ap_columns(flat_p, flat_y)
    out["roc_auc_micro"] = auc_micro[0]
    out["roc_auc_macro"] = auc[scored].mean() if num_scored else np.nan
    out["pr_auc_micro"] = ap_micro[0]
    out["pr_auc_macro"] = ap[scored].mean() if num_scored else np.nan
    out["num_labels_scored_auc"] = num_scored
    return {k: float(out[k]) for k in METRIC_KEYS}


def _micro_f1_per_threshold(probs: np.ndarray, labels: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Micro-F1 at every threshold of ``grid`` with one sort: O(NC log NC + G log NC)."""
    flat_p = probs.ravel()
    flat_y = labels.ravel()
    order = np.argsort(flat_p, kind="stable")
    p_sorted = flat_p[order]
    pos_sorted = flat_y[order].astype(np.int64)
    # Number of cells / positives with score < t, for every t in grid.
    below = np.searchsorted(p_sorted, grid, side="left")
    pos_cum = np.concatenate([[0], np.cumsum(pos_sorted)])
    total_pos = pos_cum[-1]
    predicted = flat_p.size - below  # cells with score >= t
    tp = total_pos - pos_cum[below]
    fp = predicted - tp
    fn = total_pos - tp
    return _safe_div(2 * tp, 2 * tp + fp + fn)


def tune_threshold(
    probs: np.ndarray,
    labels: np.ndarray,
    grid: np.ndarray | None = None,
) -> tuple[float, float]:
    """Picks the single global threshold on ``grid`` that maximises micro-F1.

    Predictions follow :func:`multilabel_metrics` (``probs >= t``). Ties (equal micro-F1, within a
    relative 1e-12) go to the threshold closest to 0.5; between two equally close ones, the smaller.

    Args:
      probs: ``[N, C]`` scores.
      labels: ``[N, C]`` {0, 1} indicator matrix.
      grid: candidate thresholds (1-D); defaults to ``np.linspace(0.05, 0.95, 19)``.

    Returns:
      ``(best_threshold, best_micro_f1)`` as Python floats.

    Example:
      >>> import numpy as np
      >>> probs = np.array([[0.9, 0.3], [0.35, 0.8]])
      >>> labels = np.array([[1, 0], [0, 1]])
      >>> t, f1 = tune_threshold(probs, labels)  # 0.4 ... 0.75 all reach 1.0; 0.5 is closest to 0.5
      >>> round(t, 6), f1
      (0.5, 1.0)
    """
    probs, labels = _check_inputs(probs, labels)
    grid = np.linspace(0.05, 0.95, 19) if grid is None else np.asarray(grid, dtype=np.float64)
    if grid.ndim != 1 or grid.size == 0:
        raise ValueError(f"grid must be a non-empty 1-D array, got shape {grid.shape}.")
    f1 = _micro_f1_per_threshold(probs, labels, grid)
    best = f1.max()
    candidates = np.flatnonzero(f1 >= best - 1e-12 * max(abs(best), 1.0))
    # Closest to 0.5, then smallest threshold.
    key = np.lexsort((grid[candidates], np.abs(grid[candidates] - 0.5)))
    i = candidates[key[0]]
    return float(grid[i]), float(f1[i])
