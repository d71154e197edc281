"""FP32 shadow: how far the quantized model's loss and gradient are from the float32 model's.

Evaluates both on the same params and batch; meant to run on its own schedule (it costs two
forward/backward passes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from altgrad_jax.diagnostics._tree import f32, leaves_with_paths

LossAndGrad = Callable[[Any, Any], tuple[jax.Array, Any]]


def _cosine(dot: jax.Array, na2: jax.Array, nb2: jax.Array) -> jax.Array:
    """cos from a dot product and squared norms: 1 if both are zero, 0 if exactly one is."""
    both_zero = (na2 == 0) & (nb2 == 0)
    denom = jnp.sqrt(na2) * jnp.sqrt(nb2)
    cos = jnp.clip(dot / jnp.where(denom > 0, denom, 1.0), -1.0, 1.0)
    return jnp.where(both_zero, jnp.float32(1.0), jnp.where(denom > 0, cos, jnp.float32(0.0)))


def fp32_shadow_stats(loss_and_grad_quant: LossAndGrad, loss_and_grad_fp32: LossAndGrad,
                      params: Any, batch: Any) -> dict[str, jax.Array]:
    """Gradient cosine similarity per layer and the loss gap between quantized and FP32 models.

    .. math::
       \\cos_\\ell = \\frac{\\langle g^q_\\ell, g^{32}_\\ell \\rangle}{\\|g^q_\\ell\\| \\|g^{32}_\\ell\\|},
       \\qquad \\mathrm{gap} = L^q - L^{32}

    (cos = 1 when both gradients of a layer are zero, 0 when exactly one is; NaN propagates.)

    Args:
      loss_and_grad_quant: ``(params, batch) -> (loss, grads)`` of the quantized model.
      loss_and_grad_fp32: the same for the float32 model (same params structure).
      params: the params both are evaluated at.
      batch: the batch (include a fixed dropout key in it, or use deterministic losses, so the two
        differ only by quantization).

    Returns:
      float32 scalars ``shadow/grad_cos/<path>``, ``shadow/grad_cos_mean`` (mean over layers),
      ``shadow/grad_cos_global`` (cosine of the whole flattened gradients), ``shadow/grad_norm_ratio``
      (``||g^q|| / ||g^32||``), ``shadow/loss_quant``, ``shadow/loss_fp32``, ``shadow/loss_gap``.
    """
    loss_q, g_q = loss_and_grad_quant(params, batch)
    loss_f, g_f = loss_and_grad_fp32(params, batch)
    gf = dict(leaves_with_paths(g_f))
    out: dict[str, jax.Array] = {}
    coss = []
    dot_t, nq_t, nf_t = jnp.float32(0), jnp.float32(0), jnp.float32(0)
    for path, a in leaves_with_paths(g_q):
        a, b = f32(a), f32(gf[path])
        dot, na2, nb2 = jnp.sum(a * b), jnp.sum(a * a), jnp.sum(b * b)
        c = _cosine(dot, na2, nb2)
        out[f"shadow/grad_cos/{path}"] = c
        coss.append(c)
        dot_t, nq_t, nf_t = dot_t + dot, nq_t + na2, nf_t + nb2
    out["shadow/grad_cos_mean"] = jnp.mean(jnp.stack(coss)) if coss else jnp.float32(1.0)
    out["shadow/grad_cos_global"] = _cosine(dot_t, nq_t, nf_t)
    out["shadow/grad_norm_ratio"] = jnp.where(
        nf_t > 0, jnp.sqrt(nq_t) / jnp.sqrt(jnp.where(nf_t > 0, nf_t, 1.0)), jnp.float32(0.0))
    out["shadow/loss_quant"] = f32(loss_q)
    out["shadow/loss_fp32"] = f32(loss_f)
    out["shadow/loss_gap"] = f32(loss_q) - f32(loss_f)
    return out


def make_fp32_shadow_fn(loss_fn_quant: Callable[[Any, Any], jax.Array],
                        loss_fn_fp32: Callable[[Any, Any], jax.Array]
                        ) -> Callable[[Any, Any], dict[str, jax.Array]]:
    """A jitted ``(params, batch) -> fp32_shadow_stats(...)`` from two scalar loss functions.

    Example:
      >>> loss = lambda p, x: jnp.sum((p["w"] * x) ** 2)
      >>> fn = make_fp32_shadow_fn(loss, loss)
      >>> float(fn({"w": jnp.ones(3)}, jnp.arange(3.0))["shadow/grad_cos_mean"])
      1.0
    """
    vg_q = jax.value_and_grad(loss_fn_quant)
    vg_f = jax.value_and_grad(loss_fn_fp32)
    return jax.jit(lambda params, batch: fp32_shadow_stats(vg_q, vg_f, params, batch))
