"""altgrad_jax.train.metrics against scikit-learn (the reference) and brute force."""

import time
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from altgrad_jax.train.metrics import METRIC_KEYS, multilabel_metrics, tune_threshold


def _sklearn_reference(probs, labels, threshold):
    pred = (probs >= threshold).astype(int)
    ref = {}
    for avg in ("micro", "macro"):
        # sklearn reads an [N, 1] indicator as a binary target, where micro/macro mean something
        # else; one label of a multi-label problem is the binary ('binary' average) case.
        if labels.shape[1] > 1:
            y, p, a = labels, pred, avg
        else:
            y, p, a = labels[:, 0], pred[:, 0], "binary"
        ref[f"{avg}_f1"] = skm.f1_score(y, p, average=a, zero_division=0)
        ref[f"{avg}_precision"] = skm.precision_score(y, p, average=a, zero_division=0)
        ref[f"{avg}_recall"] = skm.recall_score(y, p, average=a, zero_division=0)
    ref["subset_accuracy"] = skm.accuracy_score(labels, pred)
    ref["hamming_loss"] = skm.hamming_loss(labels, pred)
    flat_y = labels.ravel()
    if 0 < flat_y.sum() < flat_y.size:
        ref["roc_auc_micro"] = skm.roc_auc_score(labels, probs, average="micro")
    else:
        ref["roc_auc_micro"] = np.nan
    ref["pr_auc_micro"] = (
        skm.average_precision_score(labels, probs, average="micro") if flat_y.sum() else np.nan
    )
    pos = labels.sum(0)
    both = (pos > 0) & (pos < labels.shape[0])
    ref["num_labels_scored_auc"] = float(both.sum())
    if both.any():
        ref["roc_auc_macro"] = skm.roc_auc_score(labels[:, both], probs[:, both], average="macro")
        ref["pr_auc_macro"] = skm.average_precision_score(
            labels[:, both], probs[:, both], average="macro"
        )
    else:
        ref["roc_auc_macro"] = ref["pr_auc_macro"] = np.nan
    return ref


def _make_case(seed, n, c, *, quantize=None, degenerate=True):
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.02, 0.4, size=c)
    labels = (rng.uniform(size=(n, c)) < base).astype(np.int64)
    # Informative but noisy scores.
    probs = np.clip(0.35 * labels + rng.uniform(size=(n, c)) * 0.75, 0.0, 1.0)
    if quantize:  # many tied scores
        probs = np.round(probs * quantize) / quantize
    if degenerate and c >= 3:
        labels[:, 0] = 0  # no positives
        labels[:, 1] = 1  # all positives
        probs[:, 2] = 0.5  # all scores tied
    return probs, labels


CASES = [
    dict(seed=0, n=50, c=7),
    dict(seed=1, n=200, c=13, quantize=10),
    dict(seed=2, n=1, c=5),
    dict(seed=3, n=31, c=3, quantize=4),
    dict(seed=4, n=128, c=40, degenerate=False),
    dict(seed=5, n=9, c=1, quantize=3, degenerate=False),
    dict(seed=6, n=500, c=20, quantize=100),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"seed{c['seed']}_{c['n']}x{c['c']}")
@pytest.mark.parametrize("threshold_kind", ["scalar", "array"])
def test_matches_sklearn(case, threshold_kind):
    probs, labels = _make_case(**case)
    if threshold_kind == "scalar":
        threshold = 0.5
    else:
        threshold = np.random.default_rng(case["seed"] + 100).uniform(0.2, 0.8, probs.shape[1])
        threshold[0] = probs[0, 0]  # an exact hit: probs >= threshold must include equality
    got = multilabel_metrics(probs, labels, threshold)
    assert tuple(got) == METRIC_KEYS
    assert all(isinstance(v, float) for v in got.values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = _sklearn_reference(probs, labels, threshold)
    for key in METRIC_KEYS:
        np.testing.assert_allclose(got[key], ref[key], atol=1e-6, rtol=0, err_msg=key)


def test_single_class_everywhere_gives_nan_aucs():
    probs = np.random.default_rng(0).uniform(size=(10, 4))
    got = multilabel_metrics(probs, np.zeros((10, 4), dtype=int))
    assert np.isnan(got["roc_auc_micro"]) and np.isnan(got["roc_auc_macro"])
    assert np.isnan(got["pr_auc_micro"]) and np.isnan(got["pr_auc_macro"])
    assert got["num_labels_scored_auc"] == 0.0
    assert got["micro_f1"] == 0.0 and got["macro_recall"] == 0.0


def test_bool_labels_and_float32_probs():
    probs, labels = _make_case(seed=9, n=64, c=6)
    a = multilabel_metrics(probs.astype(np.float32), labels.astype(bool))
    b = multilabel_metrics(probs.astype(np.float32).astype(np.float64), labels)
    assert a == b


@pytest.mark.parametrize(
    "probs, labels, threshold, match",
    [
        (np.zeros((3, 2)), np.zeros((3, 3)), 0.5, "shape"),
        (np.zeros((3,)), np.zeros((3,)), 0.5, r"\[N, C\]"),
        (np.zeros((3, 2)), np.full((3, 2), 2), 0.5, "indicator"),
        (np.zeros((3, 2)), np.zeros((3, 2)), np.ones(3), "threshold"),
        (np.zeros((0, 2)), np.zeros((0, 2)), 0.5, "N=0"),
    ],
)
def test_bad_inputs_raise(probs, labels, threshold, match):
    with pytest.raises(ValueError, match=match):
        multilabel_metrics(probs, labels, threshold)


def _brute_force_tune(probs, labels, grid):
    best_t, best_f1 = None, -1.0
    for t in grid:
        f1 = skm.f1_score(labels, (probs >= t).astype(int), average="micro", zero_division=0)
        better = f1 > best_f1 + 1e-12
        tie = abs(f1 - best_f1) <= 1e-12 and (
            abs(t - 0.5) < abs(best_t - 0.5) or (abs(t - 0.5) == abs(best_t - 0.5) and t < best_t)
        )
        if better or tie:
            best_t, best_f1 = t, f1
    return best_t, best_f1


@pytest.mark.parametrize("case", CASES[:5], ids=lambda c: f"seed{c['seed']}")
def test_tune_threshold_matches_brute_force(case):
    probs, labels = _make_case(**case)
    grid = np.linspace(0.05, 0.95, 19)
    t, f1 = tune_threshold(probs, labels)
    bt, bf1 = _brute_force_tune(probs, labels, grid)
    assert t == bt
    np.testing.assert_allclose(f1, bf1, atol=1e-12)
    np.testing.assert_allclose(f1, multilabel_metrics(probs, labels, t)["micro_f1"], atol=1e-12)


def test_tune_threshold_tie_break_prefers_closest_to_half():
    # Every threshold in (0.35, 0.8] separates perfectly -> tie -> the one closest to 0.5.
    probs = np.array([[0.9, 0.3], [0.35, 0.8]])
    labels = np.array([[1, 0], [0, 1]])
    t, f1 = tune_threshold(probs, labels, grid=np.array([0.2, 0.4, 0.6, 0.7]))
    assert (t, f1) == (0.4, 1.0) or (t, f1) == (0.6, 1.0)
    assert t == 0.4  # 0.4 and 0.6 are equally close: the smaller wins
    t, _ = tune_threshold(probs, labels, grid=np.array([0.4, 0.55, 0.7]))
    assert t == 0.55
    # No positives at all: every threshold scores 0 -> 0.5.
    t, f1 = tune_threshold(probs, np.zeros_like(labels))
    assert f1 == 0.0 and abs(t - 0.5) < 1e-12


def test_fast_on_eval_sized_arrays():
    rng = np.random.default_rng(0)
    n, c = 6000, 100
    labels = (rng.uniform(size=(n, c)) < 0.05).astype(np.int64)
    probs = rng.uniform(size=(n, c)).astype(np.float32)
    multilabel_metrics(probs[:10], labels[:10])  # warm-up
    start = time.perf_counter()
    multilabel_metrics(probs, labels)
    tune_threshold(probs, labels)
    elapsed = time.perf_counter() - start
    # ~0.3 s on an idle 2-core CPU; the bound leaves room for a loaded CI machine.
    assert elapsed < 2.0, f"metrics took {elapsed:.3f}s for N={n}, C={c}"
