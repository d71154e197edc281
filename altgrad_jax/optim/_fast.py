"""Private: reductions of element-wise expressions that XLA on CPU runs in one fused pass.

Why this exists: XLA on CPU does not fuse an element-wise producer into a reduction that goes
through its (YNNPACK) reduce kernels or its reduce-window decomposition (compare/select/bit
operations in particular), so ``jnp.sum(f(x))`` first writes the full-size ``f(x)`` to a fresh
temporary buffer and then reads it back; on large tensors the page faults of that buffer cost
more than the arithmetic. `fold_sum` instead adds ``k`` contiguous slices of the *inputs* through
``f`` in one element-wise loop (``acc = f(x[0]) + f(x[1]) + ... + f(x[k-1])``, with ``x`` the
flattened input split into ``k`` rows), which XLA fuses into a single vectorised loop writing only
``size / k`` partial sums; those are then reduced normally. The result is the same sum (integers:
exactly; floats: a different but still pairwise-style summation order, i.e. rounding-level
differences only).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

# Slices added per fused loop. 16 measured best on CPU (64 makes the fused loop too large).
FOLD = 16
# Below this many elements per slice a plain reduction is used (nothing to gain).
_MIN_SLICE = 1024


def _fold_rows(n: int, k: int) -> int:
    for rows in (k, 8, 4, 2):
        if rows <= k and n % rows == 0 and n // rows >= _MIN_SLICE:
            return rows
    return 1


def fold(f: Callable[..., jax.Array], *arrays: jax.Array, k: int = FOLD) -> jax.Array:
    """``f`` (element-wise, same-shape arguments) summed over ``k`` slices: a 1-D partial sum.

    ``jnp.sum(fold(f, *arrays)) == jnp.sum(f(*arrays))`` up to float summation order.
    """
    n = arrays[0].size
    rows = _fold_rows(n, k)
    if rows == 1:
        return jnp.ravel(f(*arrays))
    flat = [jnp.reshape(a, (rows, n // rows)) for a in arrays]
    acc = None
    for j in range(rows):
        v = f(*[a[j] for a in flat])
        acc = v if acc is None else acc + v
    return acc


def _window_sum(x: jax.Array, window: int) -> jax.Array:
    """Sums of consecutive groups of ``window`` elements of 1-D ``x`` (size divisible by it).

    A reduce-window, which XLA on CPU does not fuse with its producer: the fold is materialised
    (``size / FOLD`` elements) instead of being re-run per consumer or split up by a YNNPACK
    reduction that takes over its adds.
    """
    return jax.lax.reduce_window(x, jnp.zeros([], x.dtype), jax.lax.add, (window,), (window,),
                                 "VALID")


def _materialize_float(x: jax.Array) -> jax.Array:
    """``x`` (float32, 1-D) unchanged, but computed by an ordinary fused loop.

    A float reduction of the fold would be handed to YNNPACK together with the fold's adds, which
    then materialises every slice of ``f`` (a full-size temporary). Adding an integer zero to the
    bit pattern (a zero XLA cannot prove: the sign bit of ``|x[0]|``) keeps the fold in XLA's own
    loop; only the ``size / FOLD`` partial sums are written.
    """
    bits = jax.lax.bitcast_convert_type(x, jnp.int32)
    zero = jax.lax.shift_right_logical(
        jax.lax.bitcast_convert_type(jnp.abs(x[0]), jnp.int32), jnp.int32(31))
    return jax.lax.bitcast_convert_type(bits + zero, jnp.float32)


def _group(n: int, cap: int) -> int:
    for w in (cap, 8, 4, 2):
        if w <= cap and n % w == 0:
            return w
    return 1


def fold_sum(f: Callable[..., jax.Array], *arrays: jax.Array, dtype=jnp.float32) -> jax.Array:
    """Scalar ``sum(f(*arrays))`` in ``dtype`` (float32 or int32), fused on CPU (see module)."""
    part = fold(lambda *a: f(*a).astype(dtype), *arrays)
    if jnp.issubdtype(dtype, jnp.integer):
        w = _group(part.size, 64)
        if w > 1:
            part = _window_sum(part, w)
    elif part.size > _MIN_SLICE:
        part = _materialize_float(part)
    return jnp.sum(part, dtype=dtype)


def fold_counts(f: Callable[..., tuple[jax.Array, ...]], *arrays: jax.Array
                ) -> tuple[jax.Array, ...]:
    """int32 counts of one to three boolean element-wise masks ``f(*arrays)``, in one fused pass.

    The masks are packed into one int32 per element (8 bits per field: a fold adds at most
    ``FOLD <= 255`` ones per field, so the fields never carry into each other), folded, and
    unpacked on the ``size / FOLD`` partial sums.
    """
    n_fields = []

    def packed(*a):
        masks = f(*a)
        if not 1 <= len(masks) <= 3:
            raise ValueError(f"fold_counts packs 1..3 masks, got {len(masks)}")
        n_fields.append(len(masks))
        out = masks[0].astype(jnp.int32)
        for i, m in enumerate(masks[1:], start=1):
            out = out + (m.astype(jnp.int32) << (8 * i))
        return out

    part = fold(packed, *arrays)
    w = _group(part.size, 8)  # fields stay <= FOLD * 8 = 128 < 256
    if w > 1:
        part = _window_sum(part, w)
    return tuple(jnp.sum((part >> (8 * i)) & 0xFF, dtype=jnp.int32) for i in range(n_fields[0]))
