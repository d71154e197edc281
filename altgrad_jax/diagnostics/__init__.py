"""Diagnostics: grid flips and stalls, rank health, gradient and quantization health, FP32 shadow,
and stability interventions.

Every measurement is a pure, jit-safe function returning a flat dict of float32 scalars with
namespaced keys (bind static arguments such as ``format_fn`` with `functools.partial`, or use the ``make_*_fn``
factories, which return jitted functions: eager calls compile every primitive separately). Cheap ones
(`flip_stats`, `below_half_step_fraction`, `gradient_stats`, `quantization_health`) can run inside the
train step; heavy ones run in their own jitted function on their own schedule (`make_rank_health_fn`,
`make_fp32_shadow_fn`). Host-side helpers (`RankTrendDetector`, `NanPatience`,
`FallbackController`, `write_failure_report`) are plain Python with JSON-able state.

Key glossary
============
``<path>`` is a parameter path such as ``block_0/attn/query/kernel`` (`altgrad_jax.quant.path_to_str`).
Counts are float32 (exact up to 2^24). A "quantized value" is ``quantize(w, f, tensor_scale(w, f))``
(`altgrad_jax.quant.tensor_scale`, the one per-tensor recipe of the forward pass and optimizers).

Flips and stalls (`flip_stats`, `below_half_step_fraction`, `StallWindow`) — ``diag/``
  ``diag/updates[/<path>]``        quantized coordinates with a non-zero update this step (float32
                                   leaves are excluded from every ``diag/`` count).
  ``diag/flips[/<path>]``          of those, the ones whose quantized value changed, compared on
                                   the pre-step grid (``tensor_scale`` of the old weights).
  ``diag/stall_ratio[/<path>]``    `stall_ratio`: ``1 - flips / updates``; 0 when nothing was
                                   updated. A stall stops learning only when weights live on the
                                   grid.
  ``diag/grid_steps_mean_abs``     mean ``|change of grid index|`` per non-zero update.
  ``diag/flip_rate``               flips / number of quantized weights.
  ``diag/below_half_step[/<path>]`` fraction of non-zero updates with ``|u| < ulp(w)/2``: updates
                                   round-to-nearest would erase if weights lived on the grid.
  ``diag/windowed_stall_ratio``    (logged by the loop from `windowed_stall_ratio`) the stall
                                   ratio over the last W steps, not since step 0.

Rank health (`rank_health`, `RankTrendDetector`) — ``rank/``; every >= 2-D leaf, 3-D+ viewed as
the most balanced 2-D matrix
  ``rank/stable/<path>``           ``||W||_F^2 / ||W||_2^2``; 0 for a zero matrix.
  ``rank/effective/<path>``        ``exp(entropy(s / sum s))`` (Roy & Vetterli 2007); 0 for zero.
  ``rank/spectral_norm/<path>``    largest singular value.
  ``rank/stable_mean``, ``rank/effective_mean``   means over the measured layers.
  ``rank/ema/<path>``, ``rank/ema_drop/<path>``   (`RankTrendDetector.metrics`) EMA of the
                                   effective rank and its relative drop from the baseline.

Gradients (`gradient_stats`, dead window) — ``grad/``
  ``grad/global_norm``, ``grad/global_max``        L2 and L-inf norm over all leaves.
  ``grad/norm/<path>``, ``grad/max/<path>``        the same per layer.
  ``grad/snr/<path>``              ``|mean(g)| / std(g)`` over the layer's elements at this step
                                   (0 when std is 0).
  ``grad/dead_frac[/<path>]``      fraction of elements with ``|g| < dead_threshold`` (1e-8).
  ``grad/nonfinite_frac``          fraction of NaN/inf gradient elements.
  ``grad/windowed_dead_frac``      (logged by the loop from `windowed_dead_fraction`) the dead
                                   fraction averaged over the last W steps.

Quantization health (`quantization_health`) — ``quant/``; quantized leaves only
  ``quant/underflow[/<path>]``     fraction of non-zero weights that flush to 0 on the scaled grid.
  ``quant/grid_error[/<path>]``    mean ``|w - Q(w)| / ulp(w)`` in grid steps (0: on the grid;
                                   ~0.25: float32 masters spread within cells; <= 0.5).
  ``quant/log2_ulp/<path>``        mean ``log2 ulp(w)`` on the tensor's scaled grid.
  ``quant/rel_error/<path>``       ``||Q(w) - w|| / ||w||``.
  ``quant/overflow[/<path>]``      only with ``weight_scales`` (delayed scaling): fraction above
                                   ``max * scale``. 0 by construction under current amax scaling.
  ``quant/grad_underflow[/<path>]``            gradient flush-to-zero fraction, amax-scaled grid.
  ``quant/grad_overflow_unscaled[/<path>]``    gradient saturation fraction at scale 1.
  ``quant/grad_underflow_unscaled[/<path>]``   gradient flush-to-zero fraction at scale 1.

FP32 shadow (`fp32_shadow_stats`, `make_fp32_shadow_fn`) — ``shadow/``
  ``shadow/grad_cos/<path>``       cosine of the quantized vs float32 gradient of a layer.
  ``shadow/grad_cos_mean``         mean of the per-layer cosines.
  ``shadow/grad_cos_global``       cosine of the whole flattened gradients.
  ``shadow/grad_norm_ratio``       ``||g_quant|| / ||g_fp32||``.
  ``shadow/loss_quant``, ``shadow/loss_fp32``, ``shadow/loss_gap`` (quantized - float32 loss).

Stability (`partition_relative_clip`, `clip_metrics`) — ``stability/``
  ``stability/clip_events``        steps in which the clip link acted on at least one leaf.
  ``stability/clip_leaves_last``   leaves it clipped in the last step.
"""

from altgrad_jax.diagnostics.clip import (PartitionRelativeClipState, clip_metrics,
                                          partition_relative_clip)
from altgrad_jax.diagnostics.failure_report import worst_layers, write_failure_report
from altgrad_jax.diagnostics.flips import (StallWindow, below_half_step_fraction, flip_stats,
                                           init_stall_window, leaf_flip_counts,
                                           make_below_half_step_fn, make_flip_stats_fn,
                                           quantized_view, stall_ratio, stall_window_full,
                                           update_stall_window, windowed_stall_ratio)
from altgrad_jax.diagnostics.grad_stats import (DeadWindow, gradient_stats, init_dead_window,
                                                update_dead_window, windowed_dead_fraction)
from altgrad_jax.diagnostics.interventions import (DEFAULT_FALLBACK_CHAIN, FallbackController,
                                                   FallbackEvent, NanPatience,
                                                   apply_fallback_to_rules)
from altgrad_jax.diagnostics.quant_health import (make_quantization_health_fn, quantization_health,
                                                  tensor_health_counts)
from altgrad_jax.diagnostics.rank import (DEFAULT_CRITICAL_PATTERNS, RankTrendDetector, as_matrix,
                                          balanced_split, make_rank_health_fn, matrix_rank_stats,
                                          rank_health)
from altgrad_jax.diagnostics.ring import (RingBuffer, init_ring_buffer, ring_full, ring_mean,
                                          ring_push, ring_sum)
from altgrad_jax.diagnostics.shadow import fp32_shadow_stats, make_fp32_shadow_fn

__all__ = [
    # flips and stalls
    "flip_stats", "stall_ratio", "leaf_flip_counts", "below_half_step_fraction", "make_flip_stats_fn", "make_below_half_step_fn",
    "quantized_view", "StallWindow", "init_stall_window",
    "update_stall_window", "windowed_stall_ratio", "stall_window_full",
    # rank
    "rank_health", "make_rank_health_fn", "matrix_rank_stats", "as_matrix", "balanced_split",
    "RankTrendDetector", "DEFAULT_CRITICAL_PATTERNS",
    # gradients
    "gradient_stats", "DeadWindow", "init_dead_window", "update_dead_window",
    "windowed_dead_fraction",
    # quantization health
    "quantization_health", "make_quantization_health_fn", "tensor_health_counts",
    # shadow
    "fp32_shadow_stats", "make_fp32_shadow_fn",
    # interventions
    "partition_relative_clip", "PartitionRelativeClipState", "clip_metrics", "NanPatience",
    "FallbackController", "FallbackEvent", "DEFAULT_FALLBACK_CHAIN", "apply_fallback_to_rules",
    "write_failure_report", "worst_layers",
    # windows
    "RingBuffer", "init_ring_buffer", "ring_push", "ring_sum", "ring_mean", "ring_full",
]
