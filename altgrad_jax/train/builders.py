"""Builders of a run's parts from its config: the quantization policy, the model, the optimizer.

One place maps ``config.quant`` / ``config.model`` / ``config.optimizer`` onto library objects, so
the loop, the sweep and the benchmarks build exactly the same run.
"""

from __future__ import annotations

import ml_collections
import optax

from altgrad_jax import diagnostics as diag_lib
from altgrad_jax.models import DROPOUT_IMPLS, EncoderClassifier, QuantPolicy
from altgrad_jax.optim import make_optimizer
from altgrad_jax.quant import PrecisionRules, format_or_none


def _activations(value):
    """``config.quant.activations``: "same" passes through, else a format or None."""
    return value if value == "same" else format_or_none(value)


EMBEDDING_PATTERN = r"(^|/)(pos_)?embed/embedding$"  # the token and position embedding tables


def embedding_format(qcfg: ml_collections.ConfigDict):
    """The format of the embedding tables named by ``config.quant.embedding_format``.

    ``"none"`` (default): float32. ``"same"``: ``quant.weight_format``. A format name: that format.
    The embedding table is its own factor of a study (82% of the default model's parameters, with
    row-sparse gradients), so ``weight_format="E4M3"`` means the dense kernels only.
    """
    value = qcfg.get("embedding_format", "none")
    if value == "same":
        return format_or_none(qcfg.weight_format)
    try:
        return format_or_none(value)
    except ValueError as e:
        raise ValueError(f"quant.embedding_format must be 'none', 'same' or a format name, got "
                         f"{value!r} ({e})") from e


def build_policy(qcfg: ml_collections.ConfigDict) -> QuantPolicy:
    """The model's `QuantPolicy` from ``config.quant``.

    Weight formats, first match wins: the embedding tables (``embed/embedding``,
    ``pos_embed/embedding``) take `embedding_format` (``quant.rules`` do not apply to them); every
    other parameter takes the first matching ``quant.rules`` entry (by default head, LayerNorm and
    biases stay float32), else ``quant.weight_format`` (the dense kernels).
    """
    rules = [(EMBEDDING_PATTERN, embedding_format(qcfg))] + [tuple(r) for r in qcfg.rules]
    rules = PrecisionRules.create(rules, default=format_or_none(qcfg.weight_format))
    return QuantPolicy(weights=rules, activations=_activations(qcfg.activations),
                       gradients=format_or_none(qcfg.gradients), margin=float(qcfg.margin),
                       native_fp8=bool(qcfg.get("native_fp8", False)))


def build_model(config: ml_collections.ConfigDict, *, vocab_size: int, num_labels: int,
                policy: QuantPolicy) -> EncoderClassifier:
    """The `EncoderClassifier` of ``config.model`` / ``config.data.max_length`` with ``policy``."""
    m = config.model
    if m.dropout_impl not in DROPOUT_IMPLS:
        raise ValueError(f"model.dropout_impl={m.dropout_impl!r} is not one of {DROPOUT_IMPLS}; "
                         "use --config.model.dropout_impl=hash")
    return EncoderClassifier(vocab_size=vocab_size, num_labels=num_labels,
                             max_length=config.data.max_length, num_layers=m.num_layers,
                             d_model=m.d_model, num_heads=m.num_heads, mlp_dim=m.mlp_dim,
                             dropout=m.dropout, dropout_impl=m.dropout_impl, pooling=m.pooling,
                             policy=policy)


def build_optimizer(config: ml_collections.ConfigDict, format_fn, num_steps: int, *,
                    snap: bool = True):
    """``(tx, lr_schedule)`` from ``config.optimizer`` (+ ``config.stability.partition_clip``).

    ``optimizer.total_steps=0`` means ``num_steps`` and ``optimizer.warmup_steps=0`` means
    ``warmup_frac * total_steps``. The format-relative clip link, when on, runs first. Every
    optimizer field is passed to `altgrad_jax.optim.make_optimizer` (its docstring lists the
    fields and the arms); ``format_fn`` (``path -> format``) gives the per-leaf formats.
    ``snap=False`` builds the intended-update twin of a regime-(b) optimizer (same state, no snap:
    see `make_optimizer`), which the diagnostics step uses to count stalls.
    """
    ocfg = ml_collections.ConfigDict(config.optimizer.to_dict())
    ocfg.total_steps = int(ocfg.total_steps) or int(num_steps)
    if not int(ocfg.warmup_steps):
        ocfg.warmup_steps = None
    tx, schedule = make_optimizer(ocfg, format_fn, snap=snap)
    if config.stability.partition_clip:
        clip = diag_lib.partition_relative_clip(
            format_fn, base_clip=float(config.stability.partition_clip_base),
            overflow_threshold=float(config.stability.partition_clip_overflow))
        tx = optax.chain(clip, tx)
    return tx, schedule
