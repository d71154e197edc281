"""Expand a "format x optimizer x seed" matrix config into run specs and run configs (pure).

The matrix config (``configs/matrix.py``) names a base run config, the formats, the optimizer
presets and the seeds. `expand` turns it into one `RunSpec` per cell, named
``<format>__<optimizer>__s<seed>`` and living in ``<out_dir>/<name>``; `run_config` builds the
``ml_collections.ConfigDict`` that ``train_and_evaluate`` trains. Nothing here trains or writes.

A run config is built in this order (later wins):

1. the base config file (``matrix.base_config``);
2. the optimizer preset (`OPTIMIZER_PRESETS`, the only place presets are defined);
3. ``matrix.overrides``: ``"group.field=value"`` strings (or a mapping) applied to every run;
4. the matrix axes: ``name``, ``quant.weight_format`` and every field in ``matrix.seed_fields``.
   Overriding an axis field in step 3 is an error.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from altgrad_jax.formats import format_names
from altgrad_jax.quant import format_or_none

# The optimizer presets of the matrix: preset name -> overrides of the run config. Learning rates
# come from the example configs (their docstrings give the calibration):
#   adamw              configs/e5m2_adamw.py (= configs/default.py): AdamW, lr 1e-3, wd 0.01.
#   manifold_gradient  the seed algorithm (stiffness times the gradient before Adam); lr is in
#                      parameter units as AdamW's, so it keeps AdamW's lr 1e-3 and wd 0.01.
#   manifold_update    configs/e5m2_manifold.py: ULP-consistent, lr 0.1 in grid steps of each
#                      weight's format, float32 leaves at 0.1 x 0.01 = 1e-3, wd 1e-4 (lr*wd = 1e-5
#                      of w per step, as AdamW). configs/e3m4_manifold.py uses lr 0.25 for E3M4
#                      (more mantissa bits, smaller relative grid step); the matrix keeps one lr
#                      for every format so a cell differs from its neighbours only by its format.
#   grid               configs/grid_e4m3.py: weights only on the grid, lr 1.0 rung per unit
#                      velocity, stochastic rounding, no decay. With format "none" the weights are
#                      float32 and the grid is float32's own.
OPTIMIZER_PRESETS: dict[str, dict[str, Any]] = {
    "adamw": {
        "optimizer.name": "adamw",
        "optimizer.learning_rate": 1e-3,
        "optimizer.weight_decay": 0.01,
    },
    "manifold_gradient": {
        "optimizer.name": "manifold_adamw",
        "optimizer.precondition": "gradient",
        "optimizer.learning_rate": 1e-3,
        "optimizer.weight_decay": 0.01,
    },
    "manifold_update": {
        "optimizer.name": "manifold_adamw",
        "optimizer.precondition": "update",
        "optimizer.learning_rate": 0.1,
        "optimizer.unformatted_scale": 0.01,
        "optimizer.weight_decay": 1e-4,
    },
    "grid": {
        "optimizer.name": "grid",
        "optimizer.learning_rate": 1.0,
        "optimizer.weight_decay": 0.0,
        "optimizer.rounding": "stochastic",
    },
}

# Formats of the default matrix: the eight 8-bit ExMy splits, BF16 and float32 ("none").
DEFAULT_FORMATS = ("E0M7", "E1M6", "E2M5", "E3M4", "E4M3", "E5M2", "E6M1", "E7M0", "BF16", "none")
DEFAULT_SEED_FIELDS = ("train.seed", "data.seed", "optimizer.seed")
_NAME_SEP = "__"


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One cell of the matrix.

    Attributes:
      name: ``<format>__<optimizer>__s<seed>``; also the run folder's name.
      format: the weight format name as given in the matrix ("none" = float32).
      optimizer: the optimizer preset name (a key of `OPTIMIZER_PRESETS`).
      seed: the seed written into every field of ``seed_fields``.
      workdir: ``<out_dir>/<name>``.
      base_config: path of the base run config file.
      overrides: ``(("group.field", value), ...)`` in application order: preset, then the matrix
        overrides (already parsed and type-checked against the base config).
      seed_fields: the run-config fields that receive ``seed``.
    """

    name: str
    format: str
    optimizer: str
    seed: int
    workdir: str
    base_config: str
    overrides: tuple[tuple[str, Any], ...] = ()
    seed_fields: tuple[str, ...] = DEFAULT_SEED_FIELDS

    @property
    def cell(self) -> str:
        """``FORMAT/OPTIMIZER/SEED``, the form ``sweep.py --only`` takes."""
        return f"{self.format}/{self.optimizer}/{self.seed}"

    def to_dict(self) -> dict:
        """JSON-compatible plan entry (``workdir`` relative to the sweep folder)."""
        return {"name": self.name, "format": self.format, "optimizer": self.optimizer,
                "seed": self.seed, "workdir": os.path.basename(self.workdir),
                "overrides": {k: _jsonable(v) for k, v in self.overrides}}


def run_name(fmt: str, optimizer: str, seed: int) -> str:
    """``<format>__<optimizer>__s<seed>``."""
    return f"{fmt}{_NAME_SEP}{optimizer}{_NAME_SEP}s{int(seed)}"


def parse_run_name(name: str) -> tuple[str, str, int] | None:
    """Inverse of `run_name`: ``(format, optimizer, seed)``, or None for any other folder name."""
    parts = name.split(_NAME_SEP)
    if len(parts) != 3 or not parts[2].startswith("s") or not parts[0] or not parts[1]:
        return None
    try:
        return parts[0], parts[1], int(parts[2][1:])
    except ValueError:
        return None


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """Runs ``get_config()`` of a config file (``configs/*.py``), as ``--config=`` does.

    Raises:
      ValueError: the file does not exist or has no ``get_config``.
    """
    if not os.path.isfile(path):
        raise ValueError(f"base config file {path!r} not found (paths are relative to the "
                         f"current directory, {os.getcwd()!r})")
    mod_name = "_altgrad_matrix_base_" + os.path.splitext(os.path.basename(path))[0]
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


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    return v


def _field_names(cfg: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    out = []
    for k, v in cfg.items():
        if isinstance(v, ml_collections.ConfigDict):
            out.extend(_field_names(v, f"{prefix}{k}."))
        else:
            out.append(f"{prefix}{k}")
    return out


def _lookup(cfg: ml_collections.ConfigDict, dotted: str, what: str):
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


def _coerce(current: Any, value: Any, dotted: str, what: str) -> Any:
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


def _set(cfg: ml_collections.ConfigDict, dotted: str, value: Any, what: str) -> None:
    node, leaf = _lookup(cfg, dotted, what)
    node[leaf] = _coerce(node[leaf], value, dotted, what)


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
            raise ValueError(f"matrix.overrides entries must be 'group.field=value' strings, got "
                             f"{entry!r}")
        key, value = entry.split("=", 1)
        items.append((key.strip(), value.strip()))
    return items


def _as_tuple(value: Any, what: str) -> tuple:
    """A tuple; comma-separated strings are split (``--config.formats=E4M3,E5M2`` arrives as
    ``("E4M3,E5M2",)`` from the command line)."""
    if isinstance(value, str):
        value = (value,)
    if isinstance(value, (tuple, list)):
        value = tuple(p.strip() for v in value for p in v.split(",") if p.strip()
                      ) if all(isinstance(v, str) for v in value) else tuple(value)
    if not isinstance(value, (tuple, list)) or not value:
        raise ValueError(f"matrix.{what} must be a non-empty tuple, got {value!r}")
    return tuple(value)


def expand(matrix_cfg: ml_collections.ConfigDict,
           base: ml_collections.ConfigDict | None = None, *,
           extra_overrides: Any = ()) -> list[RunSpec]:
    """All cells of the matrix, formats outermost, then optimizers, then seeds.

    Args:
      matrix_cfg: a config like ``configs/matrix.py``: ``base_config``, ``formats``,
        ``optimizers``, ``seeds``, ``overrides``, ``out_dir`` (``seed_fields`` optional).
      base: the base run config; default: loaded from ``matrix_cfg.base_config``.
      extra_overrides: more overrides applied after ``matrix_cfg.overrides`` (same forms;
        ``sweep.py --set``).

    Returns:
      One `RunSpec` per (format, optimizer, seed).

    Raises:
      ValueError: an unknown format, optimizer preset or override field, a duplicate, a bad seed,
        or an override of a field the matrix sets itself, with the valid choices named.
    """
    base_path = str(matrix_cfg.base_config)
    if base is None:
        base = load_config_file(base_path)
    formats = _as_tuple(matrix_cfg.formats, "formats")
    optimizers = _as_tuple(matrix_cfg.optimizers, "optimizers")
    seeds = _as_tuple(matrix_cfg.seeds, "seeds")
    seed_fields = tuple(matrix_cfg.get("seed_fields", DEFAULT_SEED_FIELDS))
    out_dir = str(matrix_cfg.out_dir)

    for f in formats:
        try:
            format_or_none(f)
        except (ValueError, KeyError) as e:
            raise ValueError(f"unknown format {f!r} in matrix.formats; valid: 'none' (float32), "
                             f"{', '.join(format_names())}") from e
    for o in optimizers:
        if o not in OPTIMIZER_PRESETS:
            raise ValueError(f"unknown optimizer preset {o!r} in matrix.optimizers; valid: "
                             f"{', '.join(OPTIMIZER_PRESETS)}")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ValueError(f"matrix.seeds must be non-negative ints, got {s!r}")
    for what, values in (("formats", formats), ("optimizers", optimizers), ("seeds", seeds)):
        if len(set(values)) != len(values):
            raise ValueError(f"matrix.{what} has duplicates: {list(values)}")

    axis_fields = {"name", "quant.weight_format", *seed_fields}
    user = parse_overrides(matrix_cfg.get("overrides", ())) + parse_overrides(extra_overrides)
    checked_user = []
    probe = ml_collections.ConfigDict(base.to_dict())  # type-check on a copy
    for f in seed_fields:
        _lookup(probe, f, "matrix.seed_fields")
    for key, value in user:
        if key in axis_fields:
            raise ValueError(f"matrix.overrides sets {key!r}, which the matrix sets per run "
                             f"(formats / seeds / run name); change the matrix axes instead")
        node, leaf = _lookup(probe, key, "matrix.overrides")
        checked_user.append((key, _coerce(node[leaf], value, key, "matrix.overrides")))
    for name, preset in OPTIMIZER_PRESETS.items():
        if name in optimizers:
            for key in preset:
                _lookup(probe, key, f"optimizer preset {name!r}")

    specs = []
    for f in formats:
        for o in optimizers:
            for s in seeds:
                name = run_name(f, o, s)
                specs.append(RunSpec(
                    name=name, format=str(f), optimizer=str(o), seed=int(s),
                    workdir=os.path.join(out_dir, name), base_config=base_path,
                    overrides=tuple(OPTIMIZER_PRESETS[o].items()) + tuple(checked_user),
                    seed_fields=seed_fields))
    return specs


def run_config(spec: RunSpec,
               base: ml_collections.ConfigDict | None = None) -> ml_collections.ConfigDict:
    """The run config of one cell: base, preset + overrides, then name, format and seeds.

    Args:
      spec: a cell from `expand`.
      base: the base run config (default: loaded from ``spec.base_config``); not modified.

    Returns:
      A locked ``ConfigDict`` ready for ``train_and_evaluate``.
    """
    cfg = load_config_file(spec.base_config) if base is None else base
    cfg = ml_collections.ConfigDict(cfg.to_dict())  # a copy: the caller's base stays as it was
    for key, value in spec.overrides:
        _set(cfg, key, value, f"run {spec.name}")
    cfg.name = spec.name
    cfg.quant.weight_format = spec.format
    for f in spec.seed_fields:
        _set(cfg, f, spec.seed, "matrix.seed_fields")
    cfg.lock()
    return cfg


def select(specs: Sequence[RunSpec], only: Sequence[str]) -> list[RunSpec]:
    """The specs named in ``only`` (``FORMAT/OPTIMIZER/SEED`` each); all of them if empty.

    Raises:
      ValueError: an entry that is not a cell of the matrix, naming the valid axes.
    """
    if not only:
        return list(specs)
    by_cell = {s.cell: s for s in specs}
    out = []
    for entry in only:
        entry = entry.strip()
        if entry not in by_cell:
            fmts = sorted({s.format for s in specs})
            opts = sorted({s.optimizer for s in specs})
            seeds = sorted({s.seed for s in specs})
            raise ValueError(f"--only entry {entry!r} is not a cell of the matrix "
                             f"(FORMAT/OPTIMIZER/SEED); formats: {fmts}, optimizers: {opts}, "
                             f"seeds: {seeds}")
        if by_cell[entry] not in out:
            out.append(by_cell[entry])
    return out
