"""The study's arms registry and its cells: stages of "formats x arms x seeds" expanded, in run
order, into `RunSpec` s and run configs (pure; nothing here trains or writes).

An *arm* is a named set of overrides of the run config (`ARMS`, the only place arms are defined).
Every arm belongs to one weight regime:

* regime ``a``: float32 master weights, quantized forward pass (``optimizer.weights_on_grid`` off);
* regime ``b``: the weights stored only on their format's grid (``weights_on_grid`` on, Adam
  moments in float32), the regime where the formats separate and the study's question lives.

The FP32 reference is format ``"none"`` with the ``adamw`` arm. Learning rates are comparable
across formats: every arm takes ``optimizer.lr_units="parameter"``, so ``learning_rate`` is an
AdamW-sized step, and the ULP arms move ``c * lr / median_spacing(tensor at init)`` grid steps per
step with the dimensionless ``c = optimizer.grid_step_multiplier`` (c = 1: an AdamW-sized step in
every format). Each arm is tuned on one field (`Arm.tune_field`: the lr for AdamW-direction arms,
``c`` for the ULP arms, ``optimizer.grid_learning_rate`` for the grid optimizer's quantized
leaves) over the same factors of its base value.

A study config (``configs/study_cpu.py``) lists *stages* in run order,
``"<stage> | <formats> | <arms> | <seeds>"``; a stage whose name starts with ``tune`` is a tuning
stage: each cell runs once per tuning factor (name suffix ``__x1o3``, ``__x1``, ``__x3``), and the
factor chosen from its records (`altgrad_jax.analysis.tuning`) is applied to the arm's later cells.

A run config is built in this order (later wins): the base config file; the study's
``overrides``; the arm's overrides; the tuned field (base value x factor); the cell's axes
(``name``, ``quant.weight_format``, the seed fields).
"""

from __future__ import annotations

import dataclasses
import fractions
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from altgrad_jax.analysis import tuning as tuning_lib
from altgrad_jax.analysis.overrides import (as_tuple, coerce, jsonable, load_config_file, lookup,
                                            parse_overrides, set_field)
from altgrad_jax.formats import format_names
from altgrad_jax.quant import format_or_none

LR = "optimizer.learning_rate"
C = "optimizer.grid_step_multiplier"
GRID_LR = "optimizer.grid_learning_rate"
_ADAMW = {"optimizer.name": "adamw", "optimizer.lr_units": "parameter", LR: 1e-3,
          "optimizer.weight_decay": 0.01, "optimizer.decay_mask": "ndim>=2"}
_ULP = {"optimizer.name": "manifold_adamw", "optimizer.lr_units": "parameter", LR: 1e-3, C: 1.0,
        "optimizer.weight_decay": 0.01, "optimizer.decay_mask": "ndim>=2"}
_A = {"optimizer.weights_on_grid": False}
# Regime (b): the float32 leaves (embedding, head, biases, LayerNorm) get AdamW at 1e-3 in every
# arm, so that tuning an AdamW arm's lr tunes only its quantized kernels (fifth stretch: the
# kernels barely move in 8 bits, so a shared lr mostly tuned the float32 leaves).
FLOAT_LR = {"optimizer.float_learning_rate": 1e-3}
_RTN = {"optimizer.weights_on_grid": True, "optimizer.rounding": "nearest", **FLOAT_LR}
_SR = {"optimizer.weights_on_grid": True, "optimizer.rounding": "stochastic", **FLOAT_LR}


@dataclasses.dataclass(frozen=True)
class Arm:
    """One arm of the study.

    Attributes:
      name: registry key (part of every run name).
      regime: ``"a"`` (float32 masters, quantized forward) or ``"b"`` (weights on the grid).
      role: what the arm is for in the analysis (printed in the report and TEST_MATRIX.md).
      overrides: ``{"group.field": value}`` applied to the run config (interfaces.md names).
      tune_field: the field the tuning stage scales (lr, ``c`` or the grid optimizer's rate).
    """

    name: str
    regime: str
    role: str
    overrides: Mapping[str, Any]
    tune_field: str = LR

    @property
    def tune_base(self) -> float:
        """The untuned value of `tune_field`."""
        return float(self.overrides[self.tune_field])


ARMS: dict[str, Arm] = {a.name: a for a in (
    Arm("adamw", "a", "AdamW on float32 masters; with format 'none' the FP32 reference; the "
        "seeds' AdamW condition", {**_ADAMW, **_A}),
    Arm("manifold_gradient", "a", "the seeds' ManifoldAdamW (stiffness x gradient before Adam) = "
        "AdamW with epsilon eps/S: the seeds' condition and a negative control",
        {**_ADAMW, "optimizer.name": "manifold_adamw", "optimizer.precondition": "gradient",
         **_A}),
    Arm("manifold_update", "a", "ULP-consistent direction (Adam direction x local grid spacing) "
        "on float32 masters", {**_ULP, "optimizer.precondition": "update", **_A}, C),
    Arm("adamw_rtn", "b", "AdamW, weights snapped to the nearest grid point after every update: "
        "the naive no-master baseline", {**_ADAMW, **_RTN}),
    Arm("adamw_sr", "b", "AdamW, weights snapped stochastically: unbiased rounding alone, the "
        "control from the stochastic-rounding literature (Gupta 2015, Zamirai 2020)",
        {**_ADAMW, **_SR}),
    Arm("ulp_sr", "b", "ULP-consistent direction, snapped stochastically: the treatment",
        {**_ULP, "optimizer.precondition": "update", **_SR}, C),
    Arm("tensor_sr", "b", "AdamW direction x the tensor's median grid spacing, snapped "
        "stochastically: per-tensor vs per-element scaling (equals ulp_sr on E0M7)",
        {**_ULP, "optimizer.precondition": "tensor", **_SR}, C),
    Arm("grid", "b", "the grid optimizer (the seeds' GridOptim: SGD-momentum velocity, "
        "stochastic rounding onto the grid, no decay of the grid leaves: it would act at the "
        "grid rate); its float32 leaves get AdamW and its decay, as in the other arms",
        {**_ADAMW, "optimizer.name": "grid", GRID_LR: 1.0, "optimizer.grid_weight_decay": 0.0,
         "optimizer.rounding": "stochastic", **FLOAT_LR}, GRID_LR),
)}
PRIMARY_ARMS = ("adamw_rtn", "adamw_sr", "ulp_sr")  # the pre-registered contrast
TREATMENT, CONTROLS = "ulp_sr", ("adamw_sr", "adamw_rtn")
REFERENCE = ("none", "adamw")  # FP32 AdamW
DEFAULT_SEED_FIELDS = ("train.seed", "data.seed", "optimizer.seed")
DEFAULT_FACTORS = ("1/3", "1", "3")
_SEP = "__"


def regime(arm: str, fmt: str) -> str:
    """``"fp32"`` for the FP32 reference, else the arm's regime (``"a"`` / ``"b"``)."""
    return "fp32" if fmt == "none" and arm == "adamw" else ARMS[arm].regime


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One cell of the study.

    Attributes:
      name: ``<format>__<arm>__s<seed>`` (``__x<factor>`` appended in a tuning stage), also the
        run folder's and the record's name.
      stage: the stage that first lists the cell.
      format, arm, seed: the cell ("none" = float32 weights).
      factor: the tuning factor (``"1/3"``, ``"1"``, ``"3"``) of a tuning cell, else None (the
        tuned factor is applied when the run config is built).
      workdir: ``<run_dir>/<name>`` (checkpoints; not tracked).
      base_config: path of the base run config file.
      overrides: ``(("group.field", value), ...)``: the study's, then the arm's (typed).
      seed_fields: the run-config fields that receive ``seed``.
    """

    name: str
    stage: str
    format: str
    arm: str
    seed: int
    factor: str | None
    workdir: str
    base_config: str
    overrides: tuple[tuple[str, Any], ...] = ()
    seed_fields: tuple[str, ...] = DEFAULT_SEED_FIELDS

    @property
    def is_tuning(self) -> bool:
        return self.factor is not None

    @property
    def regime(self) -> str:
        return regime(self.arm, self.format)

    @property
    def cell(self) -> str:
        """``FORMAT/ARM/SEED[/FACTOR]``, the form ``sweep.py --only`` takes."""
        tail = f"/{self.factor}" if self.factor else ""
        return f"{self.format}/{self.arm}/{self.seed}{tail}"

    def to_dict(self, *, overrides: bool = True) -> dict:
        """JSON-compatible cell (``overrides`` left out for the plan file: they are the study's
        and the arm's, both recorded once)."""
        out = {"name": self.name, "stage": self.stage, "format": self.format, "arm": self.arm,
               "regime": self.regime, "seed": self.seed, "factor": self.factor}
        if overrides:
            out["overrides"] = {k: jsonable(v) for k, v in self.overrides}
        return out


def factor_label(factor: str) -> str:
    """``"1/3" -> "x1o3"``, ``"3" -> "x3"`` (a file-name-safe suffix)."""
    return "x" + str(fractions.Fraction(factor)).replace("/", "o")


def run_name(fmt: str, arm: str, seed: int, factor: str | None = None) -> str:
    """``<format>__<arm>__s<seed>[__x<factor>]``."""
    name = f"{fmt}{_SEP}{arm}{_SEP}s{int(seed)}"
    return name if factor is None else f"{name}{_SEP}{factor_label(factor)}"


@dataclasses.dataclass(frozen=True)
class Stage:
    """``name | formats | arms | seeds`` of a study config; ``tune*`` names are tuning stages."""

    name: str
    formats: tuple[str, ...]
    arms: tuple[str, ...]
    seeds: tuple[int, ...]

    @property
    def is_tuning(self) -> bool:
        return self.name.startswith("tune")


def parse_stage(text: str) -> Stage:
    """``"primary | E4M3,E5M2 | adamw_rtn,ulp_sr | 1,2,3"`` -> `Stage` (validated).

    Raises:
      ValueError: a malformed stage, an unknown format or arm, a bad or duplicate seed.
    """
    parts = [p.strip() for p in str(text).split("|")]
    if len(parts) != 4 or not all(parts):
        raise ValueError(f"stage {text!r} must be 'name | formats | arms | seeds'")
    name = parts[0]
    formats = as_tuple(parts[1], f"stage {name!r} formats")
    arms = as_tuple(parts[2], f"stage {name!r} arms")
    for f in formats:
        try:
            format_or_none(f)
        except (ValueError, KeyError) as e:
            raise ValueError(f"unknown format {f!r} in stage {name!r}; valid: 'none' (float32), "
                             f"{', '.join(format_names())}") from e
    for a in arms:
        if a not in ARMS:
            raise ValueError(f"unknown arm {a!r} in stage {name!r}; valid: {', '.join(ARMS)}")
    try:
        seeds = tuple(int(s) for s in as_tuple(parts[3], f"stage {name!r} seeds"))
    except ValueError as e:
        raise ValueError(f"stage {name!r}: seeds must be non-negative ints, got {parts[3]!r}"
                         ) from e
    if any(s < 0 for s in seeds):
        raise ValueError(f"stage {name!r}: seeds must be non-negative ints, got {parts[3]!r}")
    for what, values in (("formats", formats), ("arms", arms), ("seeds", seeds)):
        if len(set(values)) != len(values):
            raise ValueError(f"stage {name!r} has duplicate {what}: {list(values)}")
    return Stage(name, formats, arms, seeds)


def _checked_overrides(study_cfg, base, extra_overrides) -> list[tuple[str, Any]]:
    seed_fields = tuple(study_cfg.get("seed_fields", DEFAULT_SEED_FIELDS))
    axis_fields = {"name", "quant.weight_format", *seed_fields}
    probe = ml_collections.ConfigDict(base.to_dict())
    for f in seed_fields:
        lookup(probe, f, "study seed_fields")
    out = []
    for key, value in (parse_overrides(study_cfg.get("overrides", ()))
                       + parse_overrides(extra_overrides)):
        if key in axis_fields:
            raise ValueError(f"study overrides set {key!r}, which every cell sets itself "
                             f"(format / seed / name); change the stages instead")
        node, leaf = lookup(probe, key, "study overrides")
        out.append((key, coerce(node[leaf], value, key, "study overrides")))
    return out


def expand(study_cfg: ml_collections.ConfigDict,
           base: ml_collections.ConfigDict | None = None, *,
           extra_overrides: Any = ()) -> list[RunSpec]:
    """Every cell of a study, in run order (stage by stage; in a stage formats, arms, seeds,
    factors). A cell listed again by a later stage keeps its first place.

    With ``seed_blocks`` set in the study config, a non-tuning stage runs seed by seed: every
    format x arm of the first seed, then of the next (each seed a complete replicate block).
    An interrupted stage then covers every format evenly, and whatever drifts between stretches
    of work (machine load, a code fix) falls across seeds, which the analysis models as blocks,
    instead of across formats.

    Args:
      study_cfg: a config like ``configs/study_cpu.py`` (``base_config``, ``overrides``,
        ``stages``, ``run_dir``, ``tuning_factors``; ``seed_fields`` optional).
      base: the base run config (default: loaded from ``study_cfg.base_config``).
      extra_overrides: more overrides after the study's (``sweep.py --set``).

    Raises:
      ValueError: a bad stage, an unknown override field or an arm field the base config lacks.
    """
    base_path = str(study_cfg.base_config)
    base = load_config_file(base_path) if base is None else base
    raw = study_cfg.stages
    stages = [parse_stage(s) for s in ((raw,) if isinstance(raw, str) else tuple(raw))]
    if not stages:
        raise ValueError("study stages must list at least one 'name | formats | arms | seeds'")
    factors = tuple(str(f) for f in study_cfg.get("tuning_factors", DEFAULT_FACTORS))
    for f in factors:
        try:
            fractions.Fraction(f)
        except (ValueError, ZeroDivisionError) as e:
            raise ValueError(f"tuning factor {f!r} is not a number like '1/3' or '3'") from e
    user = _checked_overrides(study_cfg, base, extra_overrides)
    probe = ml_collections.ConfigDict(base.to_dict())
    for a in {a for s in stages for a in s.arms}:
        for key in ARMS[a].overrides:
            lookup(probe, key, f"arm {a!r}")
    seed_fields = tuple(study_cfg.get("seed_fields", DEFAULT_SEED_FIELDS))
    blocks = bool(study_cfg.get("seed_blocks", False))
    specs, seen = [], set()
    for st in stages:
        if blocks and not st.is_tuning:
            cells = [(f, a, s) for s in st.seeds for f in st.formats for a in st.arms]
        else:
            cells = [(f, a, s) for f in st.formats for a in st.arms for s in st.seeds]
        for f, a, s in cells:
            for fac in (factors if st.is_tuning else (None,)):
                name = run_name(f, a, s, fac)
                if name in seen:
                    continue
                seen.add(name)
                specs.append(RunSpec(
                    name=name, stage=st.name, format=str(f), arm=a, seed=int(s), factor=fac,
                    workdir=os.path.join(str(study_cfg.run_dir), name), base_config=base_path,
                    seed_fields=seed_fields,
                    overrides=tuple(user) + tuple(ARMS[a].overrides.items())))
    return specs


def add_tuning_factors(specs: Sequence[RunSpec], add: Mapping[str, str]) -> list[RunSpec]:
    """``specs`` with, for each ``key: factor`` of ``add``, one more tuning cell per (format,
    seed) of the key's tuning cells (the arm's, or with a key ``"<arm>@<format>"`` the arm's on
    that format), at that factor, placed right after the key's last tuning cell (the bracket
    extension of `altgrad_jax.analysis.tuning`)."""
    out = list(specs)
    for key, factor in add.items():
        arm, _, fmt = key.partition("@")
        tune = [s for s in out if s.is_tuning and s.arm == arm and fmt in ("", s.format)]
        if not tune:
            continue
        names = {s.name for s in out}
        new = []
        for s in tune:
            name = run_name(s.format, arm, s.seed, factor)
            if name not in names:
                names.add(name)
                new.append(dataclasses.replace(
                    s, name=name, factor=str(factor),
                    workdir=os.path.join(os.path.dirname(s.workdir), name)))
        at = out.index(tune[-1]) + 1
        out[at:at] = new
    return out


def tuned_value(spec: RunSpec, chosen: Mapping[str, str] | None) -> tuple[str, float, str]:
    """``(field, value, factor)`` the cell's tuned field gets: base x its own factor (tuning
    cells), base x the chosen factor (the cell's format's own choice, else its arm's), else
    base x 1."""
    arm = ARMS[spec.arm]
    factor = spec.factor or tuning_lib.choice_for(chosen or {}, spec.arm, spec.format) or "1"
    return arm.tune_field, arm.tune_base * float(fractions.Fraction(factor)), factor


def run_config(spec: RunSpec, base: ml_collections.ConfigDict | None = None, *,
               chosen: Mapping[str, str] | None = None) -> ml_collections.ConfigDict:
    """The locked run config of one cell.

    Args:
      spec: a cell from `expand`.
      base: the base run config (default: loaded from ``spec.base_config``); not modified.
      chosen: ``{key: factor}`` chosen by the tuning stage (`tuning.choose_factors`; a key is
        an arm or ``"<arm>@<format>"``).
    """
    cfg = load_config_file(spec.base_config) if base is None else base
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    for key, value in spec.overrides:
        set_field(cfg, key, value, f"run {spec.name}")
    field, value, _ = tuned_value(spec, chosen)
    set_field(cfg, field, value, f"run {spec.name}")
    cfg.name = spec.name
    cfg.quant.weight_format = spec.format
    for f in spec.seed_fields:
        set_field(cfg, f, spec.seed, "study seed_fields")
    cfg.lock()
    return cfg


def select(specs: Sequence[RunSpec], only: Sequence[str]) -> list[RunSpec]:
    """The specs named in ``only`` (``FORMAT/ARM/SEED[/FACTOR]`` or run names); all if empty.

    Raises:
      ValueError: an entry that is not a cell of the study.
    """
    if not only:
        return list(specs)
    by_key = {**{s.cell: s for s in specs}, **{s.name: s for s in specs}}
    out = []
    for entry in (e.strip() for e in only):
        if entry not in by_key:
            raise ValueError(f"--only entry {entry!r} is not a cell of the study "
                             f"(FORMAT/ARM/SEED[/FACTOR] or a run name); formats: "
                             f"{sorted({s.format for s in specs})}, arms: "
                             f"{sorted({s.arm for s in specs})}, seeds: "
                             f"{sorted({s.seed for s in specs})}")
        if by_key[entry] not in out:
            out.append(by_key[entry])
    return out
