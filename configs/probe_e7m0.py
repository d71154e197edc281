"""Exploratory probe (not pre-registered; outside study_cpu's analysis): is E7M0's negative
benefit of ULP-aware updates an under-tuned step size?

The study tunes each arm's factor once, on E3M4 and E6M1, and shares it across formats. On
E7M0 the shared step makes ulp_sr move ~19x fewer kernel weights than adamw_sr (study_cpu's
mechanism table), so the question is whether a larger factor on E7M0 itself closes the gap.
This probe runs E7M0 x {ulp_sr, adamw_sr} x factors {1/9, 1/3, 1, 3, 9} at the tuning seed 0
and compares validation macro-F1 at the tuned threshold (the study's tuning metric; no test
seed). Factor 1 is the study's chosen setting for both arms. (Factor 1/3 was added after
ulp_sr's x3 and x9 runs scored below x1, and 1/9 after ulp_sr's x1/3 scored above it, to
bracket the optimum from below.) Everything else (scale, data, tokenizer, seeds'
fields) is study_cpu's.

Command (one process per core, each takes the next unclaimed cell):
  ALTGRAD_DATA_DIR=/path/to/eurlex57k python sweep.py --config=configs/probe_e7m0.py
Report (its Tuning table is the result):
  python -m altgrad_jax.analysis.report --study=reports/probe_e7m0
Measured (seed 0, validation macro-F1 at the tuned threshold; reports/probe_e7m0/REPORT.md,
the command above): ulp_sr x1/9 0.669, x1/3 0.677, x1 0.658, x3 0.591, x9 0.193; adamw_sr x1/9
0.676, x1/3 0.683, x1 0.677, x3 0.647, x9 0.526.
"""

import ml_collections

from configs import study_cpu


def get_config() -> ml_collections.ConfigDict:
    c = study_cpu.get_config()
    c.study = "probe_e7m0"
    c.stages = ("tune_probe | E7M0 | ulp_sr,adamw_sr | 0",)
    c.tuning_factors = ("1/9", "1/3", "1", "3", "9")
    c.tuning_extensions = 0  # a probe: the bracket is what it is
    c.amendments = ()
    c.run_dir = "runs/probe_e7m0"
    c.report_dir = "reports/probe_e7m0"
    return c
