"""`manifold_adamw`: AdamW with a geometry-aware (grid-aware) preconditioner, as an Optax chain."""

from __future__ import annotations

from typing import Any

import optax

from altgrad_jax.optim import _util
from altgrad_jax.optim.stiffness import scale_by_stiffness
from altgrad_jax.optim.ulp_scaling import scale_by_ulp

PRECONDITION_MODES = ("gradient", "update", "none")


def manifold_adamw(learning_rate: Any, b1: Any = 0.9, b2: Any = 0.999, eps: Any = 1e-8,
                   weight_decay: Any = 0.01, *, mantissa_bits: int | None = None,
                   formats: _util.FormatsSpec = None, precondition: str = "gradient",
                   max_stiffness: Any = 1e6,
                   unformatted_scale: float = 1.0) -> optax.GradientTransformation:
    """AdamW whose steps respect the weights' number grids ("ManifoldAdamW").

    ``precondition="gradient"`` (the seed's algorithm; stiffness before the moments):

    .. math::
       S &= \\min(2^{\\lfloor\\log_2|w|\\rfloor - M}, S_{max})\\ (S = 1 \\text{ at } w = 0), \\quad
       m \\leftarrow \\beta_1 m + (1-\\beta_1) S g, \\quad
       v \\leftarrow \\beta_2 v + (1-\\beta_2) (S g)^2 \\\\
       w &\\leftarrow w - \\eta\\,\\Big(\\frac{\\hat m}{\\sqrt{\\hat v} + \\epsilon} + \\lambda w\\Big)

    ``= chain(scale_by_stiffness, scale_by_adam, add_decayed_weights, scale_by_learning_rate)``.
    Because Adam divides by ``sqrt(v)``, a per-coordinate scale that is constant over time cancels:
    ``(S m)/(sqrt(S^2 v) + eps) = m / (sqrt(v) + eps/S)``. What is left is an effective epsilon
    ``eps/S`` (large S, i.e. large weights, make Adam "more Adam"; tiny S damp the step) and
    transients when a weight crosses a binade edge (S doubles or halves while ``m, v`` still hold
    the old scale). The step size in parameter units is still ``eta`` for every weight.

    ``precondition="update"`` (ULP-consistent): the normalised Adam direction is multiplied by the
    local grid spacing of the weight's target format, with the per-tensor scale
    ``s = tensor_scale(w, fmt)`` of the current params (the forward pass's scale):

    .. math::
       w \\leftarrow w - \\eta\\,\\Big(\\mathrm{ulp}(w, \\mathrm{fmt}, s)\\,
       \\frac{\\hat m}{\\sqrt{\\hat v} + \\epsilon} + \\lambda w\\Big)

    ``= chain(scale_by_adam, scale_by_ulp, add_decayed_weights, scale_by_learning_rate)``. Here
    ``eta`` is measured in *grid steps*: with ``|m_hat / sqrt(v_hat)| ~ 1`` a weight moves about
    ``eta`` rungs of its grid per step wherever it sits (a consistent flip rate across binades and
    formats). A sensible default is ``eta ~ 0.1 .. 0.5`` (a fraction of a rung per step, so float32
    masters accumulate several steps' evidence before a flip); AdamW's ``1e-3`` would almost never
    flip. The decay term keeps AdamW's units (``eta * lambda`` is the fraction of ``w`` removed per
    step), so with ``eta`` in grid steps scale ``lambda`` down by the same factor as ``eta`` went up
    (AdamW ``lr=1e-3, wd=1e-2`` ~ here ``lr=0.25, wd=4e-5``). Leaves without a format get the AdamW
    step scaled by ``unformatted_scale`` (set it to ``adamw_lr / eta`` so biases, LayerNorm and an
    unquantized head get a plain AdamW step of ``adamw_lr``; the training configs do this).

    ``precondition="none"``: exactly `optax.adamw` (bit for bit), for A/B runs.

    This is the bare algorithm: no flips or stall counts are computed. To observe them, wrap it:
    ``with_grid_diagnostics(manifold_adamw(...), formats)`` (opt-in; read them with
    `altgrad_jax.optim.metrics`).

    Args:
      learning_rate: ``eta`` (scalar or schedule); parameter units, or grid steps for "update".
      b1: exponential decay of the first moment, in [0, 1).
      b2: exponential decay of the second moment, in [0, 1).
      eps: added to ``sqrt(v_hat)``, >= 0.
      weight_decay: ``lambda`` (decoupled, as AdamW), >= 0.
      mantissa_bits: ``M`` for every leaf in "gradient" mode; None reads each leaf's format
        (leaves without one get ``S = 1``). Only valid with ``precondition="gradient"``.
      formats: the target formats: a pytree like params (FloatFormat / name / None per leaf; None
        marks a float32 leaf), a callable ``path -> format`` on ``path_to_str`` paths such as
        ``"block_0/attn/query/kernel"``, `PrecisionRules`, or one format for every leaf. Required
        for "update".
      precondition: ``"gradient"``, ``"update"`` or ``"none"``.
      max_stiffness: clamp of S ("gradient" mode).
      unformatted_scale: "update" mode: factor on the Adam direction of leaves without a format.

    Returns:
      An `optax.GradientTransformation` whose ``update`` needs ``params``.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> tx = manifold_adamw(1e-2, precondition="none")   # = optax.adamw(1e-2, weight_decay=0.01)
      >>> p = jnp.array([1.0, -2.0]); s = tx.init(p)
      >>> u, s = tx.update(jnp.array([0.5, 0.5]), s, p)
      >>> ref = optax.adamw(1e-2, weight_decay=0.01)
      >>> bool((u == ref.update(jnp.array([0.5, 0.5]), ref.init(p), p)[0]).all())
      True

    References:
      Loshchilov & Hutter, 2019, "Decoupled Weight Decay Regularization" (AdamW);
      Kingma & Ba, 2015, "Adam: A Method for Stochastic Optimization";
      Bernstein et al., 2020, "Learning compositional functions via multiplicative weight
      updates" (Madam); Zhao et al., 2022, "LNS-Madam: Low-Precision Training in Logarithmic
      Number System using Multiplicative Weight Update".
    """
    _util.check_choice("precondition", precondition, PRECONDITION_MODES)
    _util.check_number("learning_rate", learning_rate, lo=0.0)
    _util.check_number("b1", b1, lo=0.0, hi=1.0, hi_open=True)
    _util.check_number("b2", b2, lo=0.0, hi=1.0, hi_open=True)
    _util.check_number("eps", eps, lo=0.0)
    _util.check_number("weight_decay", weight_decay, lo=0.0)
    _util.check_number("max_stiffness", max_stiffness, lo=0.0, lo_open=True)
    _util.check_formats_spec(formats)
    if mantissa_bits is not None and precondition != "gradient":
        raise ValueError(f"mantissa_bits is only used by precondition='gradient', got "
                         f"mantissa_bits={mantissa_bits!r} with precondition={precondition!r}")
    if precondition == "update" and formats is None:
        raise ValueError("precondition='update' needs formats (the grid whose spacing scales the "
                         "step)")

    adam = optax.scale_by_adam(b1=b1, b2=b2, eps=eps)
    decay = optax.add_decayed_weights(weight_decay)
    lr = optax.scale_by_learning_rate(learning_rate)
    if precondition == "gradient":
        inner = optax.chain(scale_by_stiffness(mantissa_bits, formats, max_stiffness=max_stiffness),
                            adam, decay, lr)
    elif precondition == "update":
        inner = optax.chain(adam, scale_by_ulp(formats, unformatted_scale=unformatted_scale),
                            decay, lr)
    else:
        inner = optax.chain(adam, decay, lr)  # = optax.adamw
    return inner


manifold_adamw_core = manifold_adamw  # the former name of the bare chain

