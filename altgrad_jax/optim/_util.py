"""Private helpers shared by the optimizer links: per-leaf formats, validation, dtype ULPs."""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from altgrad_jax.formats import FloatFormat
from altgrad_jax.formats.codec import _c, _shr, float32_bits
from altgrad_jax.quant import PrecisionRules, exp2_int, format_or_none, path_to_str

FormatsSpec = Any  # None | FloatFormat | str | PrecisionRules | Callable[[str], ...] | pytree


def is_leaf(x: Any) -> bool:
    """Leaves for our tree walks: None (a 'no format' marker) and optax's MaskedNode are leaves."""
    return x is None or isinstance(x, optax.MaskedNode)


def is_array_leaf(x: Any) -> bool:
    return not is_leaf(x)


def _as_format(value: Any, where: str) -> FloatFormat | None:
    if value is None:
        return None
    if isinstance(value, (FloatFormat, str)):
        try:
            return format_or_none(value)
        except ValueError as e:
            raise ValueError(f"formats: {where}: {e}") from e
    raise ValueError(f"formats: {where}: expected a FloatFormat, a format name or None, got "
                     f"{type(value).__name__}: {value!r}")


def check_formats_spec(formats: FormatsSpec) -> None:
    """Factory-time check of what can be checked without params (names, types)."""
    if formats is None or callable(formats) or isinstance(formats, PrecisionRules):
        return
    if isinstance(formats, (FloatFormat, str)):
        _as_format(formats, "the single format")


def resolve_formats(formats: FormatsSpec, tree: Any) -> list[FloatFormat | None]:
    """One format (or None) per leaf of ``tree`` (flattened with `is_leaf`), validated.

    ``formats`` may be None (no leaf has a format), one format (or name) for every leaf, a
    `PrecisionRules`, a callable ``path -> format`` (path from `altgrad_jax.quant.path_to_str`),
    or a pytree matching ``tree`` whose leaves are FloatFormat / name / None.

    Raises:
      ValueError: naming ``formats`` if the tree does not match or an entry is not a format.
    """
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    n = len(leaves)
    if formats is None:
        return [None] * n
    if isinstance(formats, (FloatFormat, str)):
        return [_as_format(formats, "the single format")] * n
    if isinstance(formats, PrecisionRules):
        formats = formats.lookup
    if callable(formats) and not isinstance(formats, (dict, list, tuple)):
        out = []
        for path, _ in leaves:
            name = path_to_str(path)
            out.append(_as_format(formats(name), f"formats({name!r})"))
        return out
    try:
        flat = treedef.flatten_up_to(formats)
    except (ValueError, TypeError) as e:
        raise ValueError(
            "formats does not match the structure of params: pass a pytree with the same "
            "structure (a FloatFormat, a format name or None per leaf), a callable "
            f"path -> format, or PrecisionRules. Details: {e}") from e
    return [_as_format(f, f"leaf {path_to_str(p)!r}") for f, (p, _) in zip(flat, leaves)]


def flatten(tree: Any) -> tuple[list[Any], Any]:
    return jax.tree_util.tree_flatten(tree, is_leaf=is_leaf)


def check_number(name: str, value: Any, *, lo: float | None = None, hi: float | None = None,
                 lo_open: bool = False, hi_open: bool = False) -> None:
    """Validates Python numbers at factory time; arrays/tracers/schedules pass unchecked."""
    if callable(value) or isinstance(value, (jax.Array, np.ndarray)):
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {type(value).__name__}: {value!r}")
    v = float(value)
    if v != v:
        raise ValueError(f"{name} must not be NaN")
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {value!r}")
    if hi is not None and (v > hi or (hi_open and v == hi)):
        raise ValueError(f"{name} must be {'<' if hi_open else '<='} {hi}, got {value!r}")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def floor_log2(x32: jax.Array) -> jax.Array:
    """int32 ``floor(log2|x|)`` of float32 values from the exponent field (exact; float32
    subnormals give -127, zero gives -127, inf/NaN give 128)."""
    return (_shr(float32_bits(x32), 23) & _c(0xFF)).astype(jnp.int32) - 127


def dtype_ulp(x: jax.Array) -> jax.Array:
    """float32 ULP of ``x`` in its own dtype (float32: 2^(e-23), bfloat16: 2^(e-7), ...)."""
    finfo = jnp.finfo(x.dtype)
    m = int(finfo.nmant)
    emin = int(finfo.minexp)
    e = jnp.maximum(floor_log2(x.astype(jnp.float32)), emin)
    return exp2_int(jnp.clip(e - m, -149, 127))


def landing_update(target: jax.Array, w: jax.Array) -> jax.Array:
    """A float32 update ``u`` with ``w + u == target`` exactly (what `optax.apply_updates` adds).

    ``target - w`` is rounded when the two are far apart in magnitude, so ``w + (target - w)`` can
    land one float32 ULP away from ``target`` (off the grid). One compensation step
    ``u += target - (w + u)`` fixes every case where some float32 ``u`` reaches ``target``. None does
    when ``target`` is more than ~2^24 times smaller than ``w`` and not a multiple of ``ulp(w) / 2``
    (a jump from a large weight to a tiny grid value, possible only in wide-range formats such as
    E5M2 or E7M0): there the weight lands on 0 instead (``u = -w``), which is on every grid.
    NaN/inf targets pass through as ``target - w``.
    """
    t = target.astype(jnp.float32)
    w = w.astype(jnp.float32)
    u = t - w
    land = w + u
    u = jnp.where(land == t, u, u + (t - land))
    ok = (w + u == t) | ~jnp.isfinite(t)
    return jnp.where(ok, u, -w)


def finish_bit_position(track: bool, treedef: Any, new_leaves: list, pos_abs_sum: jax.Array,
                        prev: Any, signed_sum: jax.Array, denom: jax.Array
                        ) -> tuple[Any, jax.Array]:
    """``(bit_position, bit_position_mean_abs)`` of the new state, shared by the diagnostics and
    the grid optimizer: the per-leaf arrays and the mean ``|b|`` over elements (``track``), or the
    scalar running mean ``prev + signed_sum / denom`` and its absolute value (a lower bound)."""
    if track:
        return jax.tree_util.tree_unflatten(treedef, new_leaves), pos_abs_sum / denom
    bit_position = prev + signed_sum / denom
    return bit_position, jnp.abs(bit_position)
