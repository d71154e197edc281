"""The study's cost plan: which cells are done, what is left, and the core-hours it will take.

Cost model (one run per core): ``seconds(run) = num_steps * sec_per_step + overhead_s``.
``sec_per_step`` is measured: the median of ``1 / perf.train_steps_per_s`` over the completed
records (training-only throughput, written by the loop); until a record carries it, the study
config's documented default (``sec_per_step``, 0.57 s/step at the CPU scale with one run per
core, DESIGN.md 5b) is used. ``overhead_s`` (default 90 s) covers the data build with a cached
tokenizer, three validation passes and the test pass.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Mapping, Sequence

from altgrad_jax.analysis import tuning as tuning_lib
from altgrad_jax.analysis.records import value

DEFAULT_SEC_PER_STEP = 0.57
DEFAULT_OVERHEAD_S = 90.0


def measured_sec_per_step(records: Mapping[str, dict]) -> float | None:
    """Median ``1 / perf.train_steps_per_s`` of the completed records (None when none has it)."""
    vals = [1.0 / v for r in records.values() if r.get("status") == "completed"
            and (v := value(r, "perf/train_steps_per_s")) is not None and v > 0]
    return statistics.median(vals) if vals else None


def cell_state(spec, records: Mapping[str, dict], choices: Mapping) -> str:
    """``done`` / ``diverged`` / ``interrupted`` (record present) / ``wait_tune`` (the arm's tuning
    choice is pending or failed) / ``todo``."""
    rec = records.get(spec.name)
    if rec is not None:
        status = rec.get("status")
        return "done" if status == "completed" else str(status)
    ch = tuning_lib.choice_for(choices, spec.arm, spec.format)
    if not spec.is_tuning and ch is not None and ch.status != "chosen":
        return "wait_tune"
    return "todo"


@dataclasses.dataclass(frozen=True)
class CostPlan:
    """Counts and core-hours of a study (``remaining_h`` excludes the completed cells)."""

    cells: int
    done: int
    remaining: int
    sec_per_step: float
    measured: bool
    total_h: float
    remaining_h: float


FREE = ("done", "reuse")  # states that cost no training: recorded, or copied from another study


def plan_cost(specs: Sequence, num_steps: Mapping[str, int], states: Mapping[str, str], *,
              sec_per_step: float | None, default_sec_per_step: float = DEFAULT_SEC_PER_STEP,
              overhead_s: float = DEFAULT_OVERHEAD_S) -> CostPlan:
    """The `CostPlan` of ``specs`` (``num_steps`` and ``states`` by run name)."""
    sps = default_sec_per_step if sec_per_step is None else sec_per_step
    secs = {s.name: num_steps[s.name] * sps + overhead_s for s in specs}
    done = [s for s in specs if states[s.name] == "done"]
    return CostPlan(len(specs), len(done), len(specs) - len(done), sps, sec_per_step is not None,
                    sum(secs.values()) / 3600.0,
                    sum(v for n, v in secs.items() if states[n] not in FREE) / 3600.0)
