"""Where the report's numbers come from: which cells ran and which did not (`cell_status`), the
interim seed blocks (`interim_seeds`), the study's cost and machines, its protocol amendments and
the caveats its records' code facts imply. Each text builder returns markdown lines."""

from __future__ import annotations

import collections

from altgrad_jax.analysis import cost as cost_lib
from altgrad_jax.analysis import markdown as md
from altgrad_jax.analysis import stats
from altgrad_jax.analysis.records import value


def code_caveats(recs) -> tuple[str, ...]:
    """Caveats read from the records' ``code`` facts (what changed between stretches)."""
    old = sorted(r["name"] for r in recs
                 if (r.get("code") or {}).get("dropout_impl", "threefry") == "threefry")
    if not old or len(old) == len(recs):
        return ()
    return (f"Dropout masks: {', '.join(f'`{n}`' for n in old)} trained with threefry masks "
            "(`flax.linen.Dropout`), every other run with the counter-based masks "
            "(`model.dropout_impl='hash'`, 1.2x faster): the same Bernoulli distribution, a "
            "different random stream. "
            + ("All of them are tuning runs (seed 0), outside the test analysis."
               if all(r.get("seed") == 0 for r in recs if r["name"] in old) else
               "Some are test-set runs: compare them with care."),)


FULL_SCALE_FLOP_RATIO = 1313.6 / 12.19  # the seeds' full scale vs the CPU scale, per step


def cost_summary(all_recs, study: str = "study_cpu") -> list[str]:
    """What the study has cost so far, measured from the records' perf (one run per core); the
    dry-run command names ``configs/<study>.py``."""
    done = [r for r in all_recs.values() if r.get("status") == "completed"]
    reused = sum(1 for r in done if r.get("reused_from"))
    walls = [v for r in done if (v := value(r, "perf/wall_time_s")) is not None]
    sps = cost_lib.measured_sec_per_step(all_recs)
    if not walls or sps is None:
        return ["No completed run with throughput figures yet."]
    mean_wall = sum(walls) / len(walls)
    # Records written before the wall time was carried across a resume count the last process
    # only; one that resumed shows it by a wall time below its (cumulative) training time.
    short = sum(1 for r in done if value(r, "perf/processes") is None
                and (value(r, "perf/wall_time_s") or 0.0) < (value(r, "perf/train_time_s") or 0.0))
    bound = (f" (a lower bound: {short} of these runs resumed before the wall time was carried "
             "across processes, so theirs is their last process's only)" if short else "")
    return [f"{len(walls)} completed runs: median {sps:.2f} s per training step (two runs side by "
            f"side, one per core; training time only), mean wall time {mean_wall / 60:.1f} min "
            f"per run (compile, data, evaluations included), {sum(walls) / 3600:.1f} core-hours "
            f"in all{bound}. The seeds' full scale is "
            f"{FULL_SCALE_FLOP_RATIO:.0f}x the FLOPs per step: at this rate about "
            f"{sps * FULL_SCALE_FLOP_RATIO * 1000 / 3600:.0f} core-hours per 1,000-step run, "
            "out of reach on this CPU (the cost plan of the remaining cells: "
            f"`python sweep.py --config=configs/{study}.py --dry_run`)."
            + (f" {reused} of these runs were trained by another study and their records "
               "reused here (`reused_from`: the same program, checked field by field)."
               if reused else "")]


def machine_name(r: dict) -> str:
    """The machine a record names (its ``environment``: the process that ended the run)."""
    env = r.get("environment") or {}
    if not env:
        return "not recorded"
    return (f"{env.get('cpu', '?')} ({env.get('cpu_count', '?')} cores, "
            f"{env.get('backend', '?')}: {env.get('device_kind', '?')}; jax "
            f"{(env.get('versions') or {}).get('jax', '?')})")


def machines_summary(recs) -> list[str]:
    """How many completed runs each machine ran, and the paired groups (one stage, format and
    seed: the cells a per-format contrast compares) whose records name more than one."""
    counts = collections.Counter(machine_name(r) for r in recs)
    if not counts:
        return []
    lines = ["Machines named by the records (the process that ended each run; \"not recorded\": "
             "the record predates the field): "
             + "; ".join(f"{k}: {n} run{'s' if n != 1 else ''}" for k, n in sorted(counts.items()))
             + "."]
    groups = collections.defaultdict(set)
    for r in recs:
        if r.get("factor") is None and int(r["seed"]) != 0:
            groups[(r.get("stage"), r["format"], r["seed"])].add(machine_name(r))
    known = {g: m for g, m in groups.items() if "not recorded" not in m}
    split = sorted(f"{st} {f} seed {s}" for (st, f, s), m in known.items() if len(m) > 1)
    if known:
        lines += ["", f"Paired groups (stage, format, seed) whose records all name a machine: "
                      f"{len(known)}; of these, run on more than one machine: "
                      + (", ".join(split) if split else "none") + "."]
    return lines


def amendments_section(plan) -> list[str]:
    """The study config's ``amendments`` (changes to the protocol after the study started, each
    saying which cells had run), as their own section; nothing when there are none."""
    items = [str(a) for a in ((plan or {}).get("config") or {}).get("amendments") or ()]
    if not items:
        return []
    return (["## Protocol amendments", "",
             "Changes made after the first cell ran, in order, with the cells they affect "
             "(from the study config's `amendments`):", ""]
            + [f"{i}. {a}" for i, a in enumerate(items, start=1)] + [""])


def cell_status(all_recs, plan) -> tuple[list[str], int, int]:
    """A table of cells per stage (planned, completed, stopped, not run), the stopped runs by
    name and reason, the names of the cells not run yet (folded); and the primary counts."""
    planned = [c for c in (plan or {}).get("cells", [])]
    names = {c["name"] for c in planned} | set(all_recs)
    done = {n for n, r in all_recs.items() if r.get("status") == "completed"}
    prim = [c["name"] for c in planned if c.get("stage") == stats.PRIMARY_STAGE]
    order = [c["name"] for c in planned] + sorted(set(all_recs) - {c["name"] for c in planned})
    stage_of = {c["name"]: c.get("stage", "?") for c in planned}
    stage_of.update({n: all_recs[n].get("stage", "?") for n in all_recs if n not in stage_of})
    stopped = [n for n in order if n in all_recs and n not in done]
    missing: dict[str, list[str]] = {}
    for n in order:
        if n not in all_recs:
            missing.setdefault(stage_of[n], []).append(n)
    stages = list(dict.fromkeys(stage_of[n] for n in order))
    rows = [[st, sum(stage_of[n] == st for n in order), sum(stage_of[n] == st for n in done),
             sum(stage_of[n] == st for n in stopped), len(missing.get(st, []))] for st in stages]
    lines = [f"Cells: {len(names)} planned or recorded, {len(done)} completed.", ""]
    lines += md.table(["stage", "cells", "completed", "stopped", "not run yet"], rows)
    if stopped:
        lines += ["", "Stopped (excluded from every table):", ""]
    for n in stopped:
        r = all_recs[n]
        lines.append(f"- `{n}`: {r.get('status', '?')} at step {r.get('step')}"
                     + (f": {r.get('reason')}" if r.get("reason") else ""))
    if missing:
        lines += ["", f"<details><summary>The {sum(map(len, missing.values()))} cells not run "
                  "yet (excluded from every table)</summary>", ""]
        lines += [f"- stage {stage}, {len(ns)} not run yet: " + ", ".join(f"`{n}`" for n in ns)
                  for stage, ns in missing.items()]
        lines += ["", "</details>"]
    return lines, len([n for n in prim if n in done]), len(prim)


def interim_note(seeds: list[int] | None, a: dict | None) -> str:
    if seeds is None or a is None:
        return ""
    return ("**Interim** (the primary stage has not finished; the fit below uses the complete "
            f"seed blocks only, seeds {', '.join(map(str, seeds))}: every cell of those seeds, "
            "and nothing of a seed still running; the answer is the fit on every seed). ")


def interim_seeds(all_recs: dict, plan: dict | None) -> list[int] | None:
    """The seeds an interim analysis may use, or None once the primary stage has finished.

    While a planned primary cell has no record yet, the pooled model is fitted on the complete
    seed blocks only: the seeds whose every planned primary cell has finished (completed or
    diverged). Every format then enters with the same seeds, so an interim contrast never
    compares a format seen at two seeds with one seen at one, and no figure is read from a
    model with a residual degree of freedom or two. Once every planned primary cell has a
    record (or without a plan) every seed enters: the pre-registered analysis.
    """
    cells = [c for c in (plan or {}).get("cells", []) if c.get("stage") == stats.PRIMARY_STAGE]
    if all(c["name"] in all_recs for c in cells):
        return None
    seeds = sorted({int(c["seed"]) for c in cells})
    return [s for s in seeds if all(c["name"] in all_recs for c in cells if int(c["seed"]) == s)]
