"""Opt-in grid diagnostics kept in optimizer state (flips, stalls, bit position) and `metrics()`.

Everything here is *not used by the algorithm* and *opt-in*: `manifold_adamw` and the other
optimizers are the bare algorithms; wrap one in `with_grid_diagnostics` (or pass
``grid_optimizer(..., diagnostics=True)``) to observe, on every step, what it does to the weights
as seen through their quantization grids. The training loop does not use these: it computes the
same figures in its own diagnostics step every ``diag.every`` steps
(`altgrad_jax.diagnostics.flip_stats`).

Cost: a few element-wise passes over the params and the update per step (about 2-3x an
``optax.adamw`` step on XLA:CPU, which is a single memory-bound pass); hence opt-in.

Definitions, per step, over *formatted* leaves only (float32 leaves are excluded from every count),
with ``w`` the params before, ``u`` the update the wrapped optimizer returns, ``w' = w + u``, and
the pre-step grid ``s = tensor_scale(w, fmt)`` used on both sides (one definition with
`altgrad_jax.diagnostics.flip_stats`, computed by the same `leaf_flip_counts`):

* ``updates``: coordinates with ``u != 0``.
* ``flips``: of those, the ones whose grid index changed.
* ``stall_ratio``: `altgrad_jax.diagnostics.stall_ratio` = ``1 - flips / updates`` (0 if none).
* ``grid_steps_mean_abs``: mean ``|change of grid index|`` per update.
* ``bit_position``: signed cumulative movement of each weight in grid steps of its format,
  ``sum_t (w'_t - w_t) / ulp(w_t, fmt, s_t)`` (zero for float32 leaves).

Wrapped around a chain that ends with `snap_to_grid`, ``u`` is the snapped update: an update the
snap rounded away is then a zero update, not a stall (measure the pre-snap update instead, e.g.
with `altgrad_jax.diagnostics.below_half_step_fraction`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from altgrad_jax.diagnostics.flips import leaf_flip_counts, stall_ratio
from altgrad_jax.optim import _util
from altgrad_jax.optim.grid import GridOptimizerState
from altgrad_jax.optim.stiffness import ScaleByStiffnessState
from altgrad_jax.optim.ulp_scaling import ScaleByUlpState
from altgrad_jax.quant import tensor_scale, ulp


class GridDiagnosticsState(NamedTuple):
    """State of `with_grid_diagnostics`: the inner state plus diagnostics (not used by the algorithm).

    Attributes:
      inner_state: the wrapped transformation's state.
      flips: float32, formatted coordinates with a non-zero update whose grid value changed.
      updates: float32, formatted coordinates with a non-zero update.
      stall_ratio: float32, `altgrad_jax.diagnostics.stall_ratio` of the two.
      grid_steps_mean_abs: float32, mean ``|change of grid index|`` per update.
      bit_position: per-leaf float32 arrays (``track_bit_position=True``) or a float32 scalar, the
        mean over formatted elements of the signed cumulative movement (``False``).
      bit_position_mean_abs: float32, mean ``|bit_position|`` over formatted elements; with
        ``track_bit_position=False`` it is ``|mean bit_position|``, a lower bound.
    """

    inner_state: Any
    flips: jax.Array
    updates: jax.Array
    stall_ratio: jax.Array
    grid_steps_mean_abs: jax.Array
    bit_position: Any
    bit_position_mean_abs: jax.Array


def _grid_steps(w32: jax.Array, n32: jax.Array, fmt) -> jax.Array:
    return (n32 - w32) / ulp(w32, fmt, tensor_scale(w32, fmt))


def with_grid_diagnostics(inner: optax.GradientTransformation, formats: _util.FormatsSpec = None,
                          *, track_bit_position: bool = True
                          ) -> optax.GradientTransformationExtraArgs:
    """Wraps any optimizer so that its state records what each step does on the weights' grids.

    .. math::
       \\mathrm{updates} = \\#\\{i : u_i \\ne 0\\}, \\quad
       \\mathrm{flips} = \\#\\{i : u_i \\ne 0,\\ Q_s(w_i + u_i) \\ne Q_s(w_i)\\}, \\quad
       s = \\mathrm{tensor\\_scale}(w)

    over formatted leaves. The updates are passed through unchanged (bit for bit). See the module
    docstring for every definition. Read the values with `metrics` or
    ``optax.tree.get(state, "flips")``.

    Args:
      inner: the optimizer to observe (any `optax.GradientTransformation`).
      formats: per-leaf target formats (pytree / callable / `PrecisionRules` / one format / None).
      track_bit_position: keep the per-element cumulative bit position (one float32 per
        parameter); False keeps scalars only.

    Returns:
      A `GradientTransformationExtraArgs` whose ``update`` needs ``params``.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> tx = with_grid_diagnostics(optax.sgd(0.5), "E4M3")
      >>> p = jnp.array([1.0, 2.0]); s = tx.init(p)
      >>> u, s = tx.update(jnp.array([1.0, 0.0]), s, p)
      >>> int(s.flips), int(s.updates)
      (1, 1)
    """
    _util.check_formats_spec(formats)
    inner = optax.with_extra_args_support(inner)

    def init_fn(params):
        _util.resolve_formats(formats, params)
        z = jnp.zeros([], jnp.float32)
        bp = (jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params)
              if track_bit_position else z)
        return GridDiagnosticsState(inner_state=inner.init(params), flips=z, updates=z,
                                    stall_ratio=z, grid_steps_mean_abs=z, bit_position=bp,
                                    bit_position_mean_abs=z)

    def update_fn(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError("with_grid_diagnostics needs params: tx.update(grads, state, params)")
        new_updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
        fmts = _util.resolve_formats(formats, params)
        p_leaves, treedef = _util.flatten(params)
        u_leaves, _ = _util.flatten(new_updates)
        b_leaves = _util.flatten(state.bit_position)[0] if track_bit_position else None
        flips = upd = steps = signed = pos_abs = jnp.float32(0)
        new_b, n = [], 0
        for i, (w, u, fmt) in enumerate(zip(p_leaves, u_leaves, fmts)):
            if _util.is_leaf(w) or fmt is None:
                if track_bit_position:
                    new_b.append(b_leaves[i])
                continue
            w32 = w.astype(jnp.float32)
            n32 = (w + u.astype(w.dtype)).astype(w.dtype).astype(jnp.float32)  # apply_updates
            f, c, st = leaf_flip_counts(w32, n32, u, fmt)
            flips, upd, steps = flips + f, upd + c, steps + st
            n += w.size
            moved = _grid_steps(w32, n32, fmt)
            if track_bit_position:
                new_b.append(b_leaves[i] + moved)
                pos_abs = pos_abs + jnp.sum(jnp.abs(new_b[-1]))
            else:
                signed = signed + jnp.sum(moved)
        denom = jnp.float32(max(n, 1))
        bit_position, pos_mean_abs = _util.finish_bit_position(
            track_bit_position, treedef, new_b, pos_abs, state.bit_position, signed, denom)
        new_state = GridDiagnosticsState(
            inner_state=inner_state, flips=flips, updates=upd, stall_ratio=stall_ratio(flips, upd),
            grid_steps_mean_abs=jnp.where(upd > 0, steps / jnp.maximum(upd, 1.0), 0.0),
            bit_position=bit_position, bit_position_mean_abs=pos_mean_abs)
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ------------------------------------------------------------------------------------- metrics
_PREFIX = "optim/"


def _scalar_fields(state: Any, names: tuple[str, ...]) -> dict[str, jax.Array]:
    out = {}
    for name in names:
        value = getattr(state, name, None)
        if value is not None and hasattr(value, "shape") and jnp.ndim(value) == 0:
            out[name] = value
    return out


def _bit_position_mean(state: Any) -> jax.Array | None:
    bp = getattr(state, "bit_position", None)
    if bp is None:
        return None
    leaves = jax.tree.leaves(bp)
    n = sum(int(x.size) for x in leaves)
    if n == 0:
        return None
    if len(leaves) == 1 and jnp.ndim(leaves[0]) == 0 and not isinstance(bp, (dict, list, tuple)):
        return jnp.asarray(leaves[0], jnp.float32)
    return sum(jnp.sum(x) for x in leaves) / jnp.float32(n)


def metrics(opt_state: Any) -> dict[str, jax.Array]:
    """Flat dict of the optimizer's diagnostic scalars with ``optim/`` keys (jit-safe, no host sync).

    Keys present depend on the links in the chain:

    * grid diagnostics (`with_grid_diagnostics`, `grid_optimizer`): ``optim/flips``,
      ``optim/updates``, ``optim/stall_ratio``, ``optim/grid_steps_mean_abs``,
      ``optim/bit_position_mean``, ``optim/bit_position_mean_abs``; the grid optimizer adds
      ``optim/rungs_clipped_frac``.
    * ``precondition="gradient"``: ``optim/stiffness_mean``, ``optim/stiffness_clamped_frac``.
    * ``precondition="update"``: ``optim/ulp_mean``.
    * `optax.inject_hyperparams`: ``optim/learning_rate`` and ``optim/hp/<name>`` for the other
      numeric hyperparameters.

    If a state holds several links of one kind (e.g. under ``optax.multi_transform``), the second
    and later get a suffix ``_1``, ``_2``, ...

    Example:
      >>> import jax.numpy as jnp
      >>> from altgrad_jax.optim import manifold_adamw
      >>> tx = with_grid_diagnostics(manifold_adamw(1e-3, mantissa_bits=3), "E4M3")
      >>> sorted(metrics(tx.init(jnp.ones(3))))[:3]
      ['optim/bit_position_mean', 'optim/bit_position_mean_abs', 'optim/flips']
    """
    kinds = (GridDiagnosticsState, GridOptimizerState, ScaleByStiffnessState, ScaleByUlpState,
             optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)
    found = [x for x in jax.tree_util.tree_leaves(opt_state,
                                                   is_leaf=lambda x: isinstance(x, kinds))
             if isinstance(x, kinds)]
    # Nested states (the inner state of a wrapper) are found through their own entries.
    found = _expand(found, kinds)
    out: dict[str, jax.Array] = {}
    counts: dict[type, int] = {}

    def put(kind, values):
        i = counts.get(kind, 0)
        counts[kind] = i + 1
        suffix = f"_{i}" if i else ""
        for k, v in values.items():
            out[f"{_PREFIX}{k}{suffix}"] = v

    for st in found:
        if isinstance(st, (GridDiagnosticsState, GridOptimizerState)):
            vals = _scalar_fields(st, ("flips", "updates", "stall_ratio", "grid_steps_mean_abs",
                                       "bit_position_mean_abs", "rungs_clipped_frac"))
            mean = _bit_position_mean(st)
            if mean is not None:
                vals["bit_position_mean"] = mean
            put(GridDiagnosticsState, vals)
        elif isinstance(st, ScaleByStiffnessState):
            put(ScaleByStiffnessState, _scalar_fields(st, ScaleByStiffnessState._fields))
        elif isinstance(st, ScaleByUlpState):
            put(ScaleByUlpState, _scalar_fields(st, ScaleByUlpState._fields))
        else:
            vals = {}
            for k, v in st.hyperparams.items():
                if hasattr(v, "shape") and jnp.ndim(v) == 0:
                    vals[k if k == "learning_rate" else f"hp/{k}"] = v
            put(optax.InjectHyperparamsState, vals)
    return out


def _expand(states: list[Any], kinds: tuple[type, ...]) -> list[Any]:
    out = []
    for st in states:
        out.append(st)
        inner = getattr(st, "inner_state", None)
        if inner is not None:
            nested = [x for x in jax.tree_util.tree_leaves(inner, is_leaf=lambda x: isinstance(
                x, kinds)) if isinstance(x, kinds)]
            out.extend(_expand(nested, kinds))
    return out
