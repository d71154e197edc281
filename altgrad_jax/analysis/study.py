"""A study opened from its config: cells in run order, their records, tuning choices, the plan
file and the dry-run table (pure apart from reading records and writing ``plan.json``).

``report_dir`` (tracked) holds ``runs/<name>.json`` records and ``plan.json``; ``run_dir``
(ignored) holds the run folders with checkpoints.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any

import ml_collections

from altgrad_jax.analysis import cost as cost_lib
from altgrad_jax.analysis import matrix as matrix_lib
from altgrad_jax.analysis import reuse as reuse_lib
from altgrad_jax.analysis import tuning as tuning_lib
from altgrad_jax.analysis.overrides import load_config_file
from altgrad_jax.analysis.records import load_records


@dataclasses.dataclass
class Study:
    """An expanded study.

    Attributes:
      cfg: the study config; base: the base run config.
      planned: the cells the config lists, in run order (fixed; TEST_MATRIX.md shows them).
      specs: ``planned`` plus the tuning cells the bracket-extension rule has added from the
        records (`altgrad_jax.analysis.tuning`); refreshed by `refresh` and `choices`.
      report_dir, run_dir: the tracked record folder and the ignored run-folder root.
    """

    cfg: ml_collections.ConfigDict
    base: ml_collections.ConfigDict
    planned: list
    specs: list
    report_dir: str
    run_dir: str

    @property
    def tuning_specs(self) -> list:
        return [s for s in self.specs if s.is_tuning]

    @property
    def metric(self) -> str:
        return str(self.cfg.get("tuning_metric", tuning_lib.DEFAULT_METRIC))

    @property
    def scope(self) -> str:
        """``tuning_scope``: one factor per arm (``"arm"``) or per (arm, format)."""
        return str(self.cfg.get("tuning_scope", "arm"))

    def records(self) -> dict[str, dict]:
        return load_records(self.report_dir)

    def refresh(self, records: dict | None = None) -> list:
        """Sets and returns ``specs``: ``planned`` with the bracket extensions the records call
        for (each added factor waits for its runs before the rule looks again)."""
        records = self.records() if records is None else records
        n_base = len(tuple(self.cfg.get("tuning_factors", matrix_lib.DEFAULT_FACTORS)))
        max_factors = n_base + int(self.cfg.get("tuning_extensions", 0))
        specs = list(self.planned)
        while True:
            add = tuning_lib.factors_to_add([s for s in specs if s.is_tuning], records,
                                            max_factors=max_factors, metric=self.metric,
                                            scope=self.scope)
            if not add:
                break
            specs = matrix_lib.add_tuning_factors(specs, add)
        self.specs = specs
        return specs

    def choices(self, records: dict | None = None) -> dict:
        """``{key: tuning.Choice}`` from the current records (``specs`` refreshed first; keys:
        `tuning.choice_key`)."""
        records = self.records() if records is None else records
        self.refresh(records)
        return tuning_lib.choose_factors(self.tuning_specs, records, metric=self.metric,
                                         scope=self.scope)

    def choice(self, choices: dict, spec):
        """The `tuning.Choice` that gates ``spec`` (None: its arm is not tuned)."""
        return tuning_lib.choice_for(choices, spec.arm, spec.format)

    @functools.cached_property
    def sources(self) -> reuse_lib.Sources:
        """The other studies' records this study may reuse (``reuse_from``; `reuse`)."""
        return reuse_lib.Sources(tuple(self.cfg.get("reuse_from", ()) or ()),
                                 base_config=str(self.cfg.base_config),
                                 seed_fields=tuple(self.cfg.get(
                                     "seed_fields", matrix_lib.DEFAULT_SEED_FIELDS)))

    def reusable(self, spec, chosen: dict) -> tuple[str, dict] | None:
        """(source folder, record) of another study's run of exactly ``spec``'s program at the
        factor ``chosen`` gives it, else None (`altgrad_jax.analysis.reuse`)."""
        if not self.sources.usable:
            return None
        field, value, factor = matrix_lib.tuned_value(spec, chosen)
        impl = dict(spec.overrides).get("model.dropout_impl", self.base.model.dropout_impl)
        return self.sources.find(reuse_lib.expected(
            spec, {"field": field, "value": value, "factor": factor}, str(impl)))

    def num_steps(self, spec) -> int:
        steps = dict(spec.overrides).get("train.num_steps", self.base.train.num_steps)
        return int(steps)


def open_study(study_cfg: ml_collections.ConfigDict, *, extra_overrides: Any = (),
               base: ml_collections.ConfigDict | None = None) -> Study:
    """Expands ``study_cfg`` (ValueError for bad input, naming the problem); ``specs`` includes
    the bracket extensions called for by the records already in ``report_dir``."""
    ext = int(study_cfg.get("tuning_extensions", 0))
    if ext < 0:
        raise ValueError(f"tuning_extensions must be >= 0, got {ext}")
    base = load_config_file(str(study_cfg.base_config)) if base is None else base
    planned = matrix_lib.expand(study_cfg, base, extra_overrides=extra_overrides)
    _check_scope(str(study_cfg.get("tuning_scope", "arm")), planned)
    study = Study(study_cfg, base, planned, list(planned), str(study_cfg.report_dir),
                  str(study_cfg.run_dir))
    study.refresh()
    _ = study.sources  # a bad reuse_from folder is an error now, not when a cell is reached
    return study


def _check_scope(scope: str, planned: list) -> None:
    """With ``tuning_scope="format"`` every test cell of a tuned arm needs tuning cells on its
    own format (else it would silently train at x1)."""
    tuning_lib.choice_key("", "", scope)  # ValueError for an unknown scope
    if scope != "format":
        return
    tuned = {(s.arm, s.format) for s in planned if s.is_tuning}
    arms = {a for a, _ in tuned}
    orphans = [s.name for s in planned
               if not s.is_tuning and s.arm in arms and (s.arm, s.format) not in tuned]
    if orphans:
        raise ValueError(f"tuning_scope='format': {', '.join(orphans[:3])}"
                         f"{' ...' if len(orphans) > 3 else ''} have no tuning cells on their "
                         "format; add the format to a tuning stage of the arm, or use "
                         "tuning_scope='arm'")


def write_plan(study: Study, choices: dict) -> str:
    """Writes ``<report_dir>/plan.json``: the study config, the cells in run order and the
    chosen tuning factors (the report reads it to list the missing cells)."""
    os.makedirs(study.report_dir, exist_ok=True)
    doc = {"version": 1, "study": str(study.cfg.get("study", "")),
           "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "config": json.loads(study.cfg.to_json()),
           "chosen": tuning_lib.chosen_factors(choices.values()),
           "arms": {a: {k: v for k, v in matrix_lib.ARMS[a].overrides.items()}
                    for a in dict.fromkeys(s.arm for s in study.specs)},
           "cells": [s.to_dict(overrides=False) for s in study.specs]}
    path = os.path.join(study.report_dir, "plan.json")
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, path)
    return path


def dry_run_lines(study: Study, specs: list | None = None) -> list[str]:
    """The cells in run order with their state and tuned value, then the cost plan."""
    records = study.records()
    choices = study.choices(records)
    chosen = tuning_lib.chosen_factors(choices.values())
    specs = study.specs if specs is None else specs
    states = {s.name: cost_lib.cell_state(s, records, choices) for s in specs}
    for s in specs:  # another study's record of the same program: copied, not trained
        if states[s.name] == "todo" and study.reusable(s, chosen) is not None:
            states[s.name] = "reuse"
    cfg = study.cfg
    sps = cost_lib.measured_sec_per_step(records)
    sps_used = float(cfg.get("sec_per_step", cost_lib.DEFAULT_SEC_PER_STEP)) if sps is None else sps
    overhead = float(cfg.get("overhead_s", cost_lib.DEFAULT_OVERHEAD_S))
    lines = [f"study {study.cfg.get('study', '')}: {len(specs)} cells in run order "
             f"(records: {study.report_dir}/runs, run folders: {study.run_dir})"]
    stage, cum_h = None, 0.0
    for i, s in enumerate(specs, start=1):
        if s.stage != stage:
            stage = s.stage
            members = [x for x in specs if x.stage == stage]
            h = sum(study.num_steps(x) * sps_used + overhead for x in members) / 3600.0
            cum_h += h
            lines.append(f"-- stage {stage} ({len(members)} cells, {h:.1f} core-hours; "
                         f"{cum_h:.1f} cumulative)")
        field, val, fac = matrix_lib.tuned_value(s, chosen)
        ch = study.choice(choices, s)
        if not s.is_tuning and ch is not None and ch.status != "chosen":
            tuned = f"{field.split('.')[-1]}=tuning {ch.status}"
        else:
            tuned = f"{field.split('.')[-1]}={val:.4g} (x{fac})"
        lines.append(f"{i:4d} {s.name:<36s} {s.regime:<4s} {states[s.name]:<11s} {tuned}")
    plan = cost_lib.plan_cost(
        specs, {s.name: study.num_steps(s) for s in specs}, states, sec_per_step=sps,
        default_sec_per_step=float(cfg.get("sec_per_step", cost_lib.DEFAULT_SEC_PER_STEP)),
        overhead_s=overhead)
    src = ("measured: median of the records' perf.train_steps_per_s" if plan.measured else
           "default (no record has perf.train_steps_per_s yet)")
    by_state = {}
    for v in states.values():
        by_state[v] = by_state.get(v, 0) + 1
    lines += [f"cells: {plan.cells} ({', '.join(f'{k} {v}' for k, v in sorted(by_state.items()))})",
              f"cost: {plan.sec_per_step:.3f} s/step ({src}) + "
              f"{overhead:.0f} s per run; "
              f"total {plan.total_h:.1f} core-hours, remaining {plan.remaining_h:.1f} "
              f"core-hours ({plan.remaining_h / 2:.1f} h wall on 2 cores)"]
    return lines
