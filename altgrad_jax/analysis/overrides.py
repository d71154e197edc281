"""Run-config plumbing for the study: load a ``configs/*.py`` file and apply typed
``"group.field=value"`` overrides to it (pure; nothing here trains).

A misspelt field or a value of the wrong type is a one-line ``ValueError`` naming the field and
the valid choices, as ``launch.py --config.<field>=...`` would.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import sys
from collections.abc import Mapping
from typing import Any

import ml_collections


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """Runs ``get_config()`` of a config file (``configs/*.py``), as ``--config=`` does.

    Raises:
      ValueError: the file does not exist or has no ``get_config``.
    """
    if not os.path.isfile(path):
        raise ValueError(f"base config file {path!r} not found (paths are relative to the "
                         f"current directory, {os.getcwd()!r})")
    mod_name = "_altgrad_study_base_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    added = root not in sys.path
    if added:  # configs/*.py import their siblings as ``configs.default``
        sys.path.insert(0, root)
    try:
        spec.loader.exec_module(module)
    finally:
        if added:
            sys.path.remove(root)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path!r} has no get_config()")
    return module.get_config()


def jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [jsonable(x) for x in v]
    return v


def lookup(cfg: ml_collections.ConfigDict, dotted: str, what: str):
    """(parent ConfigDict, leaf key) of ``group.field``; ValueError naming the valid fields."""
    *parents, leaf = dotted.split(".")
    node = cfg
    for i, p in enumerate(parents):
        child = node.get(p) if isinstance(node, ml_collections.ConfigDict) else None
        if not isinstance(child, ml_collections.ConfigDict):
            where = ".".join(parents[:i]) or "the config"
            valid = sorted(k for k, v in node.items() if isinstance(v, ml_collections.ConfigDict))
            raise ValueError(f"unknown config field {dotted!r} in {what}: {where} has no group "
                             f"{p!r}; valid groups: {valid}")
        node = child
    if leaf not in node or isinstance(node[leaf], ml_collections.ConfigDict):
        group = ".".join(parents) or "the config"
        valid = sorted(k for k, v in node.items() if not isinstance(v, ml_collections.ConfigDict))
        raise ValueError(f"unknown config field {dotted!r} in {what}; valid fields of {group}: "
                         f"{valid}")
    return node, leaf


def coerce(current: Any, value: Any, dotted: str, what: str) -> Any:
    """``value`` converted to the type of the existing field ``current`` (strings are parsed)."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]  # a quoted string: "quant.activations='E5M2'"
    elif isinstance(value, str) and not isinstance(current, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError) as e:
            if current is not None:
                raise ValueError(f"{what}: cannot parse {value!r} for {dotted!r} (a "
                                 f"{type(current).__name__})") from e
    if isinstance(current, bool) or isinstance(value, bool):
        ok = isinstance(current, bool) == isinstance(value, bool) or current is None
    elif isinstance(current, float):
        ok = isinstance(value, (int, float))
        value = float(value) if ok else value
    elif isinstance(current, int):
        ok = isinstance(value, int)
    elif isinstance(current, (tuple, list)):
        ok = isinstance(value, (tuple, list))
        value = tuple(value) if ok else value
    elif current is None:
        ok = True
    else:
        ok = isinstance(value, type(current))
    if not ok:
        raise ValueError(f"{what}: {dotted!r} is a {type(current).__name__} "
                         f"(now {current!r}), got {value!r}")
    return value


def set_field(cfg: ml_collections.ConfigDict, dotted: str, value: Any, what: str) -> None:
    node, leaf = lookup(cfg, dotted, what)
    node[leaf] = coerce(node[leaf], value, dotted, what)


def parse_overrides(overrides: Any) -> list[tuple[str, Any]]:
    """``("group.field=value", ...)``, ``(("group.field", value), ...)`` or a mapping (flat dotted
    keys or nested) -> ``[(key, value)]``.

    String values are parsed against the field's type later (`run_config` / `expand`).
    """
    if overrides is None:
        return []
    if isinstance(overrides, (Mapping, ml_collections.ConfigDict)):
        items = []
        for k, v in overrides.items():
            if isinstance(v, (Mapping, ml_collections.ConfigDict)):
                items.extend((f"{k}.{kk}", vv) for kk, vv in parse_overrides(v))
            else:
                items.append((str(k), v))
        return items
    if isinstance(overrides, str):
        overrides = (overrides,)
    items = []
    for entry in overrides:
        if isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[0], str):
            items.append((entry[0], entry[1]))
            continue
        if not isinstance(entry, str) or "=" not in entry:
            raise ValueError(f"overrides entries must be 'group.field=value' strings, got "
                             f"{entry!r}")
        key, value = entry.split("=", 1)
        items.append((key.strip(), value.strip()))
    return items


def as_tuple(value: Any, what: str) -> tuple:
    """A tuple; comma-separated strings are split (``--config.formats=E4M3,E5M2`` arrives as
    ``("E4M3,E5M2",)`` from the command line)."""
    if isinstance(value, str):
        value = (value,)
    if isinstance(value, (tuple, list)):
        value = tuple(p.strip() for v in value for p in v.split(",") if p.strip()
                      ) if all(isinstance(v, str) for v in value) else tuple(value)
    if not isinstance(value, (tuple, list)) or not value:
        raise ValueError(f"{what} must be a non-empty tuple, got {value!r}")
    return tuple(value)


