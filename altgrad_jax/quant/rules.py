"""Precision rules: which format each parameter (and the layer that uses it) gets.

A rule list is an ordered sequence of ``(regex, format_or_None)``; the first regex that
``re.search``-matches a parameter's path wins, otherwise the default applies. ``None`` means "not
quantized" (float32). Paths are ``/``-joined keys of the params pytree without the ``params``
collection name, e.g. ``"block_0/attn/query/kernel"`` or ``"head/kernel"``.

The same rules feed the model's quantized ``dot_general`` (via the kernel's path) and the
optimizers' per-parameter ``formats``, so one config line decides both.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import jax

from altgrad_jax.formats import FloatFormat, get_format


def format_or_none(value: FloatFormat | str | None) -> FloatFormat | None:
    """A format from a name / `FloatFormat`; None for None, ``""``, ``"none"``, ``"fp32"``,
    ``"float32"`` (not quantized). Unknown names raise ValueError listing the valid ones."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "fp32",
                                                                               "float32")):
        return None
    return get_format(value)


@dataclasses.dataclass(frozen=True)
class PrecisionRules:
    """Ordered (regex -> format) rules with a default. Frozen and hashable.

    Example:
      >>> rules = PrecisionRules.create([("head/", None), ("attn/", "E5M2")], default="E4M3")
      >>> rules.lookup("block_0/attn/query/kernel").name, rules.lookup("head/kernel")
      ('E5M2', None)
    """

    rules: tuple[tuple[str, FloatFormat | None], ...] = ()
    default: FloatFormat | None = None

    @classmethod
    def create(cls, rules: Sequence[tuple[str, Any]] = (), default: Any = None) -> "PrecisionRules":
        """Builds rules from ``(pattern, format name | FloatFormat | None)`` pairs.

        Raises:
          ValueError: for an invalid regex or an unknown format name (naming the rule).
        """
        parsed = []
        for i, item in enumerate(rules):
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise ValueError(f"precision rule #{i} must be a (regex, format) pair, got {item!r}")
            pattern, value = item
            if not isinstance(pattern, str):
                raise ValueError(f"precision rule #{i}: the pattern must be a regex string, got "
                                 f"{pattern!r}")
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"precision rule #{i}: invalid regex {pattern!r}: {e}") from e
            try:
                parsed.append((pattern, format_or_none(value)))
            except ValueError as e:
                raise ValueError(f"precision rule #{i} ({pattern!r}): {e}") from e
        return cls(rules=tuple(parsed), default=format_or_none(default))

    def lookup(self, path: str) -> FloatFormat | None:
        """The format for a parameter path (first matching rule, else the default)."""
        for pattern, fmt in self.rules:
            if re.search(pattern, path):
                return fmt
        return self.default


def path_to_str(path: Sequence[Any]) -> str:
    """A `jax.tree_util` key path (or tuple of names) -> ``"a/b/c"`` (a leading 'params' dropped)."""
    parts = []
    for k in path:
        if isinstance(k, jax.tree_util.DictKey):
            parts.append(str(k.key))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            parts.append(k.name)
        elif isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
        else:
            parts.append(str(k))
    if parts and parts[0] == "params":
        parts = parts[1:]
    return "/".join(parts)


def format_tree(params: Any, rules: PrecisionRules) -> Any:
    """A pytree like ``params`` holding each leaf's `FloatFormat` or None.

    ``None`` is an empty pytree in JAX, so the result is built with ``is_leaf`` handling in mind:
    map it together with params via ``jax.tree.map(f, params, fmts, is_leaf=lambda x: x is None)``
    or, simpler, use `format_fn` / `formats_by_path`.
    """
    return jax.tree_util.tree_map_with_path(lambda p, _: rules.lookup(path_to_str(p)), params)


def format_fn(rules: PrecisionRules):
    """``path -> format`` callable (what the optimizers accept as ``formats=``)."""
    return rules.lookup
