"""Internal helpers: walk a params pytree as ``(path string, leaf)`` pairs; resolve formats."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from altgrad_jax.formats import FloatFormat, get_format
from altgrad_jax.quant import path_to_str

FormatFn = Callable[[str], "FloatFormat | None"]


def leaves_with_paths(tree: Any) -> list[tuple[str, Any]]:
    """``[(path, leaf), ...]`` in `jax.tree_util` order; paths as in `altgrad_jax.quant.path_to_str`."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(path_to_str(p), leaf) for p, leaf in flat]


def as_format_fn(format_fn: Any) -> FormatFn:
    """Accepts a ``path -> format`` callable or a `PrecisionRules` (anything with ``.lookup``)."""
    lookup = getattr(format_fn, "lookup", None)
    fn = lookup if callable(lookup) else format_fn
    if not callable(fn):
        raise ValueError(f"format_fn must be a callable path -> FloatFormat | None (or a "
                         f"PrecisionRules), got {format_fn!r}")

    def resolved(path: str) -> FloatFormat | None:
        fmt = fn(path)
        return None if fmt is None else get_format(fmt)

    return resolved


def f32(x: Any) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


def count(mask: jax.Array) -> jax.Array:
    """Number of True elements as a float32 scalar (exact up to 2^24)."""
    return jnp.sum(mask, dtype=jnp.float32)


def safe_div(num: jax.Array, den: jax.Array, empty: float = 0.0) -> jax.Array:
    """``num / den``, or ``empty`` where ``den == 0`` (no NaN from an empty denominator)."""
    num, den = f32(num), f32(den)
    return jnp.where(den > 0, num / jnp.where(den > 0, den, jnp.float32(1.0)), jnp.float32(empty))
