"""`partition_relative_clip`: gradient clipping that acts only where a format's range overflows.

An Optax link meant to sit *before* the optimizer's update in an `optax.chain` (clipping after the
update, as the original did, clips the wrong thing).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from altgrad_jax.diagnostics._tree import as_format_fn, count, f32, leaves_with_paths


class PartitionRelativeClipState(NamedTuple):
    """Diagnostics only (not used by the algorithm); field names are unique across our chains.

    Attributes:
      clip_events: int32, number of steps in which at least one leaf was clipped
        (logged as ``stability/clip_events``).
      clip_leaves_last: int32, number of leaves clipped in the last step
        (``stability/clip_leaves_last``).
    """

    clip_events: jax.Array
    clip_leaves_last: jax.Array


def partition_relative_clip(format_fn: Any, *, base_clip: float = 1.0,
                            overflow_threshold: float = 0.01, reference_max: float = 448.0,
                            range_scale: float = 1.0) -> optax.GradientTransformation:
    """Clips a leaf's gradient norm, relative to its format's range, when that range overflows.

    For a leaf with format ``f`` (unquantized leaves pass through untouched):

    .. math::
       R = f_{max} \\cdot \\mathrm{range\\_scale},\\qquad
       o = \\frac{\\#\\{i : |g_i| > R\\}}{n},\\qquad
       c = \\mathrm{base\\_clip} \\cdot \\frac{f_{max}}{\\mathrm{reference\\_max}}

    .. math::
       g \\leftarrow \\begin{cases} g \\cdot \\min(1, c / \\|g\\|_2) & o > \\mathrm{overflow\\_threshold}
       \\\\ g & \\text{otherwise} \\end{cases}

    Design decisions:

    * **Trigger** against the *unscaled* range by default (``range_scale=1``): under current amax
      scaling nothing overflows by construction, so a trigger against the amax-scaled range would
      never fire. Pass the scale your gradient quantizer uses (e.g. a delayed scale's typical
      value) via ``range_scale`` if it is not 1.
    * **Threshold** proportional to the format's largest value, relative to ``reference_max``
      (default 448 = E4M3's max: an E4M3 partition clips at ``base_clip``, an E5M2 one at 128x it,
      an E3M4 one at 0.28x). It is fixed per format, so runs in different formats are comparable.
      Formats much narrower than the reference clip hard, but only on steps whose gradient
      overflows their range; with Adam-style optimizers the norm mostly sets how much the step
      weighs in the moments, so this damps overflow spikes rather than stopping learning.
    * Non-finite gradients are not hidden (a NaN norm makes the leaf NaN).

    Place it first: ``optax.chain(partition_relative_clip(fmt_fn), optax.adamw(...))``.

    Args:
      format_fn: ``path -> FloatFormat | None`` or a `PrecisionRules`; static.
      base_clip: the L2 clip norm of a partition whose format max equals ``reference_max``.
      overflow_threshold: act only when more than this fraction of the leaf overflows ``R``.
      reference_max: the format max that gets ``base_clip``.
      range_scale: the scale the overflow is measured at.

    Returns:
      An `optax.GradientTransformation` with state `PartitionRelativeClipState`.

    Raises:
      ValueError: for non-positive ``base_clip``/``reference_max``/``range_scale`` or an
        ``overflow_threshold`` outside [0, 1).

    Example:
      >>> tx = optax.chain(partition_relative_clip(lambda p: "E0M7"), optax.sgd(0.1))
      >>> params = {"w": jnp.zeros(4)}
      >>> upd, _ = tx.update({"w": jnp.array([2.0, 2.0, 0.0, 0.0])}, tx.init(params), params)
    """
    fmt_of = as_format_fn(format_fn)
    for name, v in (("base_clip", base_clip), ("reference_max", reference_max),
                    ("range_scale", range_scale)):
        if not v > 0:
            raise ValueError(f"partition_relative_clip: {name} must be > 0, got {v!r}")
    if not 0.0 <= overflow_threshold < 1.0:
        raise ValueError(f"partition_relative_clip: overflow_threshold must be in [0, 1), got "
                         f"{overflow_threshold!r}")

    def init_fn(params):
        del params
        return PartitionRelativeClipState(clip_events=jnp.zeros((), jnp.int32),
                                          clip_leaves_last=jnp.zeros((), jnp.int32))

    def update_fn(updates, state, params=None):
        del params
        flat, treedef = jax.tree_util.tree_flatten_with_path(updates)
        paths = [p for p, _ in leaves_with_paths(updates)]
        new_leaves, n_clipped = [], jnp.zeros((), jnp.int32)
        for path, (_, g) in zip(paths, flat):
            fmt = fmt_of(path)
            if fmt is None or g is None or jnp.size(g) == 0:
                new_leaves.append(g)
                continue
            gf = f32(g)
            r = jnp.float32(fmt.max * range_scale)
            overflow = count(jnp.abs(gf) > r) / jnp.float32(gf.size)
            act = overflow > jnp.float32(overflow_threshold)
            c = jnp.float32(base_clip * fmt.max / reference_max)
            norm = jnp.sqrt(jnp.sum(gf * gf))
            factor = jnp.where(norm > c, c / jnp.where(norm > 0, norm, 1.0), jnp.float32(1.0))
            factor = jnp.where(jnp.isnan(norm), norm, factor)
            out = jnp.where(act, gf * factor, gf).astype(jnp.asarray(g).dtype)
            new_leaves.append(out)
            n_clipped = n_clipped + (act & (factor != 1.0)).astype(jnp.int32)
        new_updates = jax.tree_util.tree_unflatten(treedef, new_leaves)
        new_state = PartitionRelativeClipState(
            clip_events=state.clip_events + (n_clipped > 0).astype(jnp.int32),
            clip_leaves_last=n_clipped)
        return new_updates, new_state

    return optax.GradientTransformation(init_fn, update_fn)


def clip_metrics(opt_state: Any) -> dict[str, jax.Array]:
    """``stability/clip_events`` and ``stability/clip_leaves_last`` (float32) from an optimizer state.

    Finds the `PartitionRelativeClipState` anywhere in ``opt_state`` (e.g. inside a chain); returns
    an empty dict if there is none.
    """
    found = [s for s in jax.tree_util.tree_leaves(
        opt_state, is_leaf=lambda x: isinstance(x, PartitionRelativeClipState))
        if isinstance(s, PartitionRelativeClipState)]
    if not found:
        return {}
    s = found[0]
    return {"stability/clip_events": f32(s.clip_events),
            "stability/clip_leaves_last": f32(s.clip_leaves_last)}

