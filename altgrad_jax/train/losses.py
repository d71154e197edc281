"""Losses for multi-label classification."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sigmoid_bce(logits: jax.Array, labels: jax.Array, *, pos_weight: float | jax.Array = 1.0,
                weights: jax.Array | None = None) -> jax.Array:
    """Mean sigmoid binary cross-entropy with an optional positive-class weight.

    .. math::
       \\ell = -\\big(w_+ \\, y \\log \\sigma(z) + (1 - y) \\log(1 - \\sigma(z))\\big)

    averaged over labels and (weighted) examples. Computed with ``log_sigmoid`` for stability.

    Args:
      logits: ``[B, C]``.
      labels: ``[B, C]`` in {0, 1}.
      pos_weight: ``w_+`` (scalar or ``[C]``); 1.0 is plain BCE.
      weights: optional ``[B]`` example weights (0 for padding rows).

    Returns:
      A float32 scalar.
    """
    logits = logits.astype(jnp.float32)
    labels = labels.astype(jnp.float32)
    per = -(pos_weight * labels * jax.nn.log_sigmoid(logits)
            + (1.0 - labels) * jax.nn.log_sigmoid(-logits))
    per_example = jnp.mean(per, axis=-1)
    if weights is None:
        return jnp.mean(per_example)
    weights = weights.astype(jnp.float32)
    return jnp.sum(per_example * weights) / jnp.maximum(jnp.sum(weights), 1.0)
