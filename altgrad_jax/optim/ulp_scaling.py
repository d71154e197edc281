"""`scale_by_ulp`: multiply the (normalised) update by each weight's local grid spacing."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from altgrad_jax.optim import _fast, _util
from altgrad_jax.quant import tensor_scale, ulp


class ScaleByUlpState(NamedTuple):
    """Diagnostics only (not used by the algorithm).

    Attributes:
      ulp_mean: mean grid spacing ``ulp(w, fmt, s)`` (in parameter units) over the elements of the
        leaves that have a format, at the last step (0 if no leaf has one).
    """

    ulp_mean: jax.Array


def grid_spacing(w: jax.Array, fmt) -> jax.Array:
    """float32 ``ulp(w, fmt, tensor_scale(w, fmt))``: the local step of the tensor's grid."""
    w32 = w.astype(jnp.float32)
    return ulp(w32, fmt, tensor_scale(w32, fmt))


def scale_by_ulp(formats: _util.FormatsSpec, *,
                 unformatted_scale: float = 1.0) -> optax.GradientTransformation:
    """Scales each update by the local grid spacing of its weight's target format.

    .. math::
       s = \\mathrm{tensor\\_scale}(w, \\mathrm{fmt}), \\qquad
       u_i \\leftarrow \\mathrm{ulp}(w_i, \\mathrm{fmt}, s)\\; u_i

    Placed after `optax.scale_by_adam` (whose direction has magnitude about 1 per coordinate), one
    unit of the final learning rate moves a weight by about one grid step of its format, wherever
    the weight sits (large weights take large steps, small weights small ones, as on the grid).
    Leaves whose format is None (float32, e.g. biases, LayerNorm, the head) are multiplied by the
    constant ``unformatted_scale`` instead: with the learning rate in grid steps, setting it to
    ``adamw_lr / lr`` gives those leaves a plain AdamW step of ``adamw_lr``.

    Args:
      formats: per-leaf formats: a pytree like params (FloatFormat / name / None per leaf), a
        callable ``path -> format`` (``path_to_str`` of the key path), `PrecisionRules`, or one
        format for all leaves.
      unformatted_scale: the factor for leaves without a format (> 0; 1.0 = unchanged).

    Returns:
      An `optax.GradientTransformation` that needs ``params``; its state holds diagnostics only.

    Example:
      >>> import jax.numpy as jnp
      >>> tx = scale_by_ulp("E4M3")
      >>> p = jnp.array([448.0, 1.0]); s = tx.init(p)
      >>> tx.update(jnp.ones(2), s, p)[0].tolist()
      [32.0, 0.125]

    References:
      Zhao et al., 2022, "LNS-Madam"; Bernstein et al., 2020 (Madam).
    """
    _util.check_formats_spec(formats)
    _util.check_number("unformatted_scale", unformatted_scale, lo=0.0, lo_open=True)

    def init_fn(params):
        _util.resolve_formats(formats, params)
        return ScaleByUlpState(ulp_mean=jnp.zeros([], jnp.float32))

    def update_fn(updates, state, params=None):
        del state
        if params is None:
            raise ValueError("scale_by_ulp needs params: tx.update(updates, state, params)")
        fmts = _util.resolve_formats(formats, params)
        u_leaves, treedef = _util.flatten(updates)
        p_leaves, _ = _util.flatten(params)
        out, total, n = [], jnp.zeros([], jnp.float32), 0
        for u, w, fmt in zip(u_leaves, p_leaves, fmts):
            if _util.is_leaf(u):
                out.append(u)
                continue
            if fmt is None:
                out.append(u if unformatted_scale == 1.0 else
                           (u.astype(jnp.float32) * unformatted_scale).astype(u.dtype))
                continue
            w32 = w.astype(jnp.float32)
            s = tensor_scale(w32, fmt)  # the forward pass's scale (one grid per tensor)
            step = ulp(w32, fmt, s)  # = grid_spacing(w, fmt)
            out.append((u.astype(jnp.float32) * step).astype(u.dtype))
            total = total + _fast.fold_sum(lambda a: ulp(a, fmt, s), w32)
            n += u.size
        mean = total / jnp.float32(max(n, 1))
        return jax.tree_util.tree_unflatten(treedef, out), ScaleByUlpState(ulp_mean=mean)

    return optax.GradientTransformation(init_fn, update_fn)
