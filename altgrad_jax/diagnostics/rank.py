"""Rank health of weight matrices (stable rank, effective rank, spectral norm) and a trend detector.

`rank_health` needs one SVD per matrix: run it as its own jitted function (`make_rank_health_fn`)
on its own schedule, never inside the train step. `RankTrendDetector` is host-side Python that
turns a sequence of measurements into warnings when a layer's effective rank collapses.

Tensors of rank 3 or more (Flax ``DenseGeneral`` kernels: the query/key/value kernel is
``[d_model, heads, head_dim]``, the attention output kernel ``[heads, head_dim, d_model]``) are
viewed as the linear map they implement, ``[prod(shape[:k]), prod(shape[k:])]``. The split ``k``
is not recorded in the array, so by default the most balanced split is taken (ties go to the later
split): this recovers ``[d_model, heads*head_dim]`` and ``[heads*head_dim, d_model]`` for the two
attention kernels, where ``[prod(leading), last]`` would give ``[d_model*heads, head_dim]`` for the
query kernel, a matrix whose rank is capped at ``head_dim`` and mixes heads with inputs. Pass
``split_fn(path, shape) -> k`` to choose otherwise.

References:
  Roy & Vetterli, "The effective rank: a measure of effective dimensionality", EUSIPCO 2007.
  Rudelson & Vershynin, "Sampling from large matrices: an approach through geometric functional
  analysis", J. ACM 2007 (stable / numerical rank).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from altgrad_jax.diagnostics._tree import leaves_with_paths

SplitFn = Callable[[str, tuple[int, ...]], int]

DEFAULT_CRITICAL_PATTERNS = (r"(^|/)head/", r"attn/out/")


def balanced_split(path: str, shape: tuple[int, ...]) -> int:
    """The split ``k`` (1 <= k < ndim) that makes ``[prod(shape[:k]), prod(shape[k:])]`` most square."""
    del path
    best_k, best = len(shape) - 1, math.inf
    for k in range(1, len(shape)):
        rows, cols = math.prod(shape[:k]), math.prod(shape[k:])
        ratio = max(rows, cols) / max(min(rows, cols), 1)
        if ratio <= best:
            best_k, best = k, ratio
    return best_k


def as_matrix(w: jax.Array, path: str = "", split_fn: SplitFn | None = None) -> jax.Array:
    """The 2-D view of a weight tensor (see the module docstring); 2-D input is returned as is."""
    w = jnp.asarray(w, jnp.float32)
    if w.ndim == 2:
        return w
    if w.ndim < 2:
        raise ValueError(f"{path or 'tensor'}: rank health needs >= 2 dims, got shape {w.shape}")
    k = (split_fn or balanced_split)(path, tuple(w.shape))
    if not 1 <= k < w.ndim:
        raise ValueError(f"split_fn returned k={k} for {path} with shape {w.shape}; need 1..ndim-1")
    return w.reshape(math.prod(w.shape[:k]), math.prod(w.shape[k:]))


def matrix_rank_stats(w: jax.Array) -> dict[str, jax.Array]:
    """Stable rank, effective rank and spectral norm of one 2-D matrix.

    With singular values ``s_1 >= s_2 >= ...`` and ``p_i = s_i / sum_j s_j``:

    .. math::
       \\mathrm{stable} = \\frac{\\|W\\|_F^2}{\\|W\\|_2^2} = \\frac{\\sum_i s_i^2}{s_1^2},\\qquad
       \\mathrm{effective} = \\exp\\Big(-\\sum_i p_i \\log p_i\\Big),\\qquad
       \\mathrm{spectral} = s_1

    A zero matrix reads 0 for all three (it has rank 0, not full rank). A matrix with a NaN/inf
    reads NaN for all three (a divergence is never hidden).

    Returns:
      ``{"stable": ..., "effective": ..., "spectral_norm": ...}`` float32 scalars.
    """
    w = jnp.asarray(w, jnp.float32)
    finite = jnp.all(jnp.isfinite(w))
    s = jnp.linalg.svd(jnp.where(finite, w, 0.0), compute_uv=False)
    s1 = jnp.max(s)
    nonzero = s1 > 0
    one = jnp.float32(1.0)
    stable = jnp.sum(s * s) / jnp.where(nonzero, s1 * s1, one)
    p = s / jnp.where(nonzero, jnp.sum(s), one)
    plogp = jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, one)), 0.0)
    effective = jnp.where(nonzero, jnp.exp(-jnp.sum(plogp)), 0.0)
    nan = jnp.float32(jnp.nan)
    return {"stable": jnp.where(finite, stable, nan),
            "effective": jnp.where(finite, effective, nan),
            "spectral_norm": jnp.where(finite, s1, nan)}


def rank_health(params: Any, *, split_fn: SplitFn | None = None,
                exclude: str | None = None) -> dict[str, jax.Array]:
    """Rank health of every weight with 2 or more dims (1-D biases and norms are skipped).

    Args:
      params: a params pytree.
      split_fn: ``(path, shape) -> k`` choosing the 2-D view of 3-D+ tensors (default
        `balanced_split`).
      exclude: optional regex; leaves whose path ``re.search``-matches it are skipped (e.g.
        ``"embed/"`` to spare the SVD of a large embedding table).

    Returns:
      float32 scalars ``rank/stable/<path>``, ``rank/effective/<path>``,
      ``rank/spectral_norm/<path>`` and the means over the measured layers ``rank/stable_mean``,
      ``rank/effective_mean`` (absent when no leaf qualifies).

    Example:
      >>> r = rank_health({"dense": {"kernel": jnp.eye(4)}})
      >>> float(r["rank/stable/dense/kernel"]), float(r["rank/effective/dense/kernel"])
      (4.0, 4.0)
    """
    out: dict[str, jax.Array] = {}
    stables, effs = [], []
    for path, w in leaves_with_paths(params):
        if jnp.ndim(w) < 2 or (exclude is not None and re.search(exclude, path)):
            continue
        stats = matrix_rank_stats(as_matrix(w, path, split_fn))
        out[f"rank/stable/{path}"] = stats["stable"]
        out[f"rank/effective/{path}"] = stats["effective"]
        out[f"rank/spectral_norm/{path}"] = stats["spectral_norm"]
        stables.append(stats["stable"])
        effs.append(stats["effective"])
    if stables:
        out["rank/stable_mean"] = jnp.mean(jnp.stack(stables))
        out["rank/effective_mean"] = jnp.mean(jnp.stack(effs))
    return out


def make_rank_health_fn(*, split_fn: SplitFn | None = None, exclude: str | None = None
                        ) -> Callable[[Any], dict[str, jax.Array]]:
    """A jitted ``params -> rank_health(params)``; build it once, call it every N steps.

    Example:
      >>> fn = make_rank_health_fn(exclude="embed/")
      >>> metrics = fn(state.params)                      # doctest: +SKIP
    """
    if exclude is not None:
        try:
            re.compile(exclude)
        except re.error as e:
            raise ValueError(f"exclude: invalid regex {exclude!r}: {e}") from e
    return jax.jit(lambda params: rank_health(params, split_fn=split_fn, exclude=exclude))


class RankTrendDetector:
    """Warns when a layer's effective rank collapses relative to its post-warm-up baseline.

    Host-side. For each layer, at each measurement (step ``t``, effective rank ``r_t``):

    * measurements before ``max(warmup_steps, 1)`` are ignored (the baseline is never step 0's
      random initialisation);
    * the first measurement at or after it sets ``baseline = ema = r_t``;
    * later ones update ``ema = decay * ema + (1 - decay) * r_t`` and the relative drop
      ``(baseline - ema) / baseline``;
    * a drop above the layer's threshold (``critical_threshold`` for layers matching one of
      ``critical_patterns``, else ``threshold``) emits one warning record (and an absl warning); the
      layer re-arms only once the drop falls below ``rearm_fraction * threshold`` (hysteresis, so a
      layer hovering at the threshold does not warn every step).

    A zero baseline (a zero matrix) never warns. Non-finite measurements are skipped.

    Args:
      warmup_steps: steps before the baseline is taken (>= 0).
      decay: EMA decay in [0, 1); 0 means no smoothing.
      critical_threshold: relative drop that warns for critical layers (default 0.15).
      threshold: relative drop that warns for the other layers (default 0.30).
      critical_patterns: regexes (``re.search``) marking critical layers; the defaults match the
        classifier head (``head/``) and the attention output projections (``attn/out/``).
      rearm_fraction: hysteresis, in (0, 1].
      key_prefix: which metrics to read from the dict given to `update`.

    Example:
      >>> det = RankTrendDetector(warmup_steps=100, decay=0.0)
      >>> det.update(100, {"rank/effective/head/kernel": 10.0})
      []
      >>> [w["layer"] for w in det.update(200, {"rank/effective/head/kernel": 8.0})]
      ['head/kernel']
    """

    def __init__(self, *, warmup_steps: int = 0, decay: float = 0.9,
                 critical_threshold: float = 0.15, threshold: float = 0.30,
                 critical_patterns: Sequence[str] = DEFAULT_CRITICAL_PATTERNS,
                 rearm_fraction: float = 0.5, key_prefix: str = "rank/effective/"):
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an int >= 0, got {warmup_steps!r}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay!r}")
        for name, v in (("critical_threshold", critical_threshold), ("threshold", threshold)):
            if not 0.0 < v < 1.0:
                raise ValueError(f"{name} must be a relative drop in (0, 1), got {v!r}")
        if not 0.0 < rearm_fraction <= 1.0:
            raise ValueError(f"rearm_fraction must be in (0, 1], got {rearm_fraction!r}")
        if isinstance(critical_patterns, str):
            critical_patterns = (critical_patterns,)
        for p in critical_patterns:
            try:
                re.compile(p)
            except re.error as e:
                raise ValueError(f"critical_patterns: invalid regex {p!r}: {e}") from e
        self.warmup_steps = warmup_steps
        self.decay = float(decay)
        self.critical_threshold = float(critical_threshold)
        self.threshold = float(threshold)
        self.critical_patterns = tuple(critical_patterns)
        self.rearm_fraction = float(rearm_fraction)
        self.key_prefix = key_prefix
        # layer -> {"baseline", "baseline_step", "ema", "warned"}
        self.layers: dict[str, dict[str, Any]] = {}

    def is_critical(self, layer: str) -> bool:
        return any(re.search(p, layer) for p in self.critical_patterns)

    def threshold_for(self, layer: str) -> float:
        return self.critical_threshold if self.is_critical(layer) else self.threshold

    def update(self, step: int, metrics: dict[str, Any]) -> list[dict[str, Any]]:
        """Feeds one measurement (e.g. the output of `rank_health`); returns new warning records.

        Each record: ``{"step", "layer", "baseline", "baseline_step", "ema", "value", "drop",
        "threshold", "critical"}`` (JSON-able).
        """
        step = int(step)
        if step < max(self.warmup_steps, 1):
            return []
        warnings = []
        for key, value in metrics.items():
            if not key.startswith(self.key_prefix):
                continue
            layer = key[len(self.key_prefix):]
            value = float(np.asarray(value))
            if not math.isfinite(value):
                continue
            st = self.layers.get(layer)
            if st is None:
                self.layers[layer] = {"baseline": value, "baseline_step": step, "ema": value,
                                      "warned": False}
                continue
            st["ema"] = self.decay * st["ema"] + (1.0 - self.decay) * value
            if st["baseline"] <= 0:
                continue
            drop = (st["baseline"] - st["ema"]) / st["baseline"]
            thr = self.threshold_for(layer)
            if not st["warned"] and drop > thr:
                st["warned"] = True
                rec = {"step": step, "layer": layer, "baseline": st["baseline"],
                       "baseline_step": st["baseline_step"], "ema": st["ema"], "value": value,
                       "drop": drop, "threshold": thr, "critical": self.is_critical(layer)}
                warnings.append(rec)
                logging.warning(
                    "rank collapse at step %d: %s effective rank EMA %.3g is %.1f%% below its "
                    "baseline %.3g (step %d; threshold %.0f%%%s)", step, layer, st["ema"],
                    100 * drop, st["baseline"], st["baseline_step"], 100 * thr,
                    ", critical layer" if rec["critical"] else "")
            elif st["warned"] and drop < self.rearm_fraction * thr:
                st["warned"] = False
        return warnings

    def metrics(self) -> dict[str, float]:
        """``rank/ema/<layer>`` and ``rank/ema_drop/<layer>`` for logging (host floats)."""
        out = {}
        for layer, st in self.layers.items():
            out[f"rank/ema/{layer}"] = st["ema"]
            out[f"rank/ema_drop/{layer}"] = ((st["baseline"] - st["ema"]) / st["baseline"]
                                             if st["baseline"] > 0 else 0.0)
        return out

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state for checkpoints (the configuration is not included)."""
        return {"layers": {k: dict(v) for k, v in self.layers.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what `state_dict` returned."""
        layers = state.get("layers", {})
        self.layers = {k: {"baseline": float(v["baseline"]), "baseline_step": int(v["baseline_step"]),
                           "ema": float(v["ema"]), "warned": bool(v["warned"])}
                       for k, v in layers.items()}
