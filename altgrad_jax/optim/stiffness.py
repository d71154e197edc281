"""`scale_by_stiffness`: multiply each gradient by the weight's binade step ("stiffness")."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from altgrad_jax.optim import _fast, _util
from altgrad_jax.quant import exp2_int


class ScaleByStiffnessState(NamedTuple):
    """Diagnostics only (not used by the algorithm): statistics of the last step's stiffness.

    Attributes:
      stiffness_mean: mean of S over every parameter element (leaves without a format count as 1).
      stiffness_clamped_frac: fraction of elements whose S was clamped to ``max_stiffness``.
    """

    stiffness_mean: jax.Array
    stiffness_clamped_frac: jax.Array


def stiffness(w: jax.Array, mantissa_bits: int, max_stiffness: Any = 1e6, *,
              fixed_step: float | None = None) -> tuple[jax.Array, jax.Array]:
    """``S = min(2^(floor(log2|w|) - M), max_stiffness)``, 1 where ``w == 0``; and the clamp mask.

    ``floor(log2|w|)`` is read from the float32 exponent field (exact; no ``log2`` rounding).
    ``fixed_step`` (fixed-point formats, E0My): ``S = fixed_step`` everywhere, the format's
    constant spacing (E0M7: 1/128, the seeds' constant). Returns float32 ``(S, clamped)``.
    """
    w32 = w.astype(jnp.float32)
    if fixed_step is not None:
        s = jnp.full(w32.shape, fixed_step, jnp.float32)
        max_s = jnp.asarray(max_stiffness, jnp.float32)
        return jnp.minimum(s, max_s), s > max_s
    e = _util.floor_log2(w32)
    s = exp2_int(jnp.clip(e - mantissa_bits, -149, 127))
    s = jnp.where(w32 == 0, jnp.float32(1.0), s)
    max_s = jnp.asarray(max_stiffness, jnp.float32)
    clamped = s > max_s
    return jnp.minimum(s, max_s), clamped


def scale_by_stiffness(mantissa_bits: int | None = None, formats: _util.FormatsSpec = None, *,
                       max_stiffness: Any = 1e6) -> optax.GradientTransformation:
    """Scales each gradient by the stiffness of its weight (the seed ManifoldAdamW preconditioner).

    .. math::
       S_i = \\min\\left(2^{\\lfloor \\log_2 |w_i| \\rfloor - M},\\ S_{max}\\right), \\quad
       S_i = 1 \\text{ if } w_i = 0, \\qquad g_i \\leftarrow S_i\\, g_i

    ``M`` is ``mantissa_bits`` when given, else the mantissa bits of each leaf's format; leaves
    without a format get ``S = 1``. A fixed-point format (no exponent bits, E0My) has one spacing
    everywhere, so its stiffness is that constant, ``S = 2^(e_min - M)`` (E0M7: 1/128, as in the
    seeds), read from the leaf's format when ``mantissa_bits`` is None. ``S`` is the spacing of an (unscaled) M-bit-mantissa grid in the
    binade of ``w``. Followed by `optax.scale_by_adam`, a per-coordinate scale that is constant over
    time cancels in ``m / sqrt(v)``; what remains is an effective change of Adam's ``eps`` (``eps/S``)
    and transients when ``w`` crosses a binade edge (S jumps by 2x while ``v`` remembers the old S).

    Args:
      mantissa_bits: M for every leaf, or None to read it from ``formats``.
      formats: per-leaf formats (see `altgrad_jax.optim.manifold_adamw`); used when
        ``mantissa_bits`` is None.
      max_stiffness: upper clamp of S.

    Returns:
      An `optax.GradientTransformation` that needs ``params`` in ``update``. Its state holds
      diagnostics only (`ScaleByStiffnessState`).

    Example:
      >>> import jax.numpy as jnp, optax
      >>> tx = scale_by_stiffness(mantissa_bits=3)
      >>> p = jnp.array([1.0, 3.0, 0.0]); s = tx.init(p)
      >>> tx.update(jnp.ones(3), s, p)[0].tolist()
      [0.125, 0.25, 1.0]

    References:
      Bernstein et al., 2020, "Learning compositional functions via multiplicative weight
      updates" (Madam); Zhao et al., 2022, "LNS-Madam".
    """
    if mantissa_bits is not None:
        if isinstance(mantissa_bits, bool) or not isinstance(mantissa_bits, int) or not (
                0 <= mantissa_bits <= 23):
            raise ValueError(f"mantissa_bits must be None or an int in 0..23, got {mantissa_bits!r}")
    _util.check_number("max_stiffness", max_stiffness, lo=0.0, lo_open=True)
    _util.check_formats_spec(formats)

    def init_fn(params):
        _util.resolve_formats(formats, params)  # validates the tree against params
        return ScaleByStiffnessState(stiffness_mean=jnp.ones([], jnp.float32),
                                     stiffness_clamped_frac=jnp.zeros([], jnp.float32))

    def update_fn(updates, state, params=None):
        del state
        if params is None:
            raise ValueError("scale_by_stiffness needs params: tx.update(updates, state, params)")
        fmts = _util.resolve_formats(formats, params)
        u_leaves, treedef = _util.flatten(updates)
        p_leaves, _ = _util.flatten(params)
        out, s_sum, c_sum, n = [], jnp.zeros([], jnp.float32), jnp.zeros([], jnp.float32), 0
        for g, w, fmt in zip(u_leaves, p_leaves, fmts):
            if _util.is_leaf(g):
                out.append(g)
                continue
            m = mantissa_bits if mantissa_bits is not None else (
                fmt.mantissa_bits if fmt is not None else None)
            n += g.size
            if m is None:
                out.append(g)
                s_sum = s_sum + jnp.float32(g.size)
                continue
            fixed = (2.0 ** (fmt.emin - fmt.mantissa_bits) if mantissa_bits is None
                     and fmt is not None and fmt.exponent_bits == 0 else None)
            s, _ = stiffness(w, m, max_stiffness, fixed_step=fixed)
            out.append((g.astype(jnp.float32) * s).astype(g.dtype))
            # The statistics recompute S inside one fused pass over w (`_fast`): a plain
            # jnp.sum(s) made XLA:CPU write S and the clamp mask to full-size buffers first.
            stiff = functools.partial(stiffness, mantissa_bits=m, max_stiffness=max_stiffness,
                                      fixed_step=fixed)
            s_sum = s_sum + _fast.fold_sum(lambda a: stiff(a)[0], w)
            c_sum = c_sum + _fast.fold_counts(lambda a: (stiff(a)[1],), w)[0].astype(
                jnp.float32)
        denom = jnp.float32(max(n, 1))
        new_state = ScaleByStiffnessState(stiffness_mean=s_sum / denom,
                                          stiffness_clamped_frac=c_sum / denom)
        return jax.tree_util.tree_unflatten(treedef, out), new_state

    return optax.GradientTransformation(init_fn, update_fn)
