"""`scale_by_tensor_spacing`: multiply each update by its tensor's median grid spacing."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from altgrad_jax.optim import _util
from altgrad_jax.quant import median_spacing


def scale_by_tensor_spacing(formats: _util.FormatsSpec) -> optax.GradientTransformation:
    """Scales each quantized leaf's update by the median grid spacing of the current tensor.

    .. math::
       u_i \\leftarrow \\sigma(w)\\, u_i, \\qquad
       \\sigma(w) = \\mathrm{median}_j\\ \\mathrm{ulp}(w_j, \\mathrm{fmt}, s(w))

    One scalar per tensor (`altgrad_jax.quant.median_spacing` at the tensor's scale recipe), where
    `scale_by_ulp` uses each element's own spacing: after `optax.scale_by_adam` it gives the
    ``precondition="tensor"`` control, which separates per-tensor from per-element grid scaling.
    On a fixed-point grid (E0M7), where every element has the same spacing, both are equal.
    Leaves whose format is None pass unchanged.

    Args:
      formats: per-leaf formats (pytree, callable ``path -> format``, `PrecisionRules`, one format).

    Returns:
      An `optax.GradientTransformation` that needs ``params``; its state is empty.

    Example:
      >>> import jax.numpy as jnp
      >>> tx = scale_by_tensor_spacing("E4M3")
      >>> p = jnp.array([1.0, 1.5, 3.0])
      >>> tx.update(jnp.ones(3), tx.init(p), p)[0].tolist()
      [0.125, 0.125, 0.125]
    """
    _util.check_formats_spec(formats)

    def init_fn(params):
        _util.resolve_formats(formats, params)
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("scale_by_tensor_spacing needs params: tx.update(updates, state, "
                             "params)")
        fmts = _util.resolve_formats(formats, params)
        u_leaves, treedef = _util.flatten(updates)
        p_leaves, _ = _util.flatten(params)
        out = []
        for u, w, fmt in zip(u_leaves, p_leaves, fmts):
            if _util.is_leaf(u) or fmt is None:
                out.append(u)
                continue
            sigma = jax.lax.stop_gradient(median_spacing(w.astype(jnp.float32), fmt))
            out.append((u.astype(jnp.float32) * sigma).astype(u.dtype))
        return jax.tree_util.tree_unflatten(treedef, out), state

    return optax.GradientTransformation(init_fn, update_fn)
