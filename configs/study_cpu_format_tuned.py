"""Sensitivity study: is the answer of study_cpu an artefact of its shared tuning?

study_cpu tunes each arm's factor once, on E3M4 and E6M1, and shares it across the seven
formats (its pre-registered protocol); its E7M0 probe (`configs/probe_e7m0.py`) found about
three quarters of E7M0's deficit to be that shared step size. Here each of the two arms that
the question compares (adamw_sr, the unbiased-rounding control, and ulp_sr, the treatment) is
tuned on every format itself (``tuning_scope="format"``: factors 1/3, 1, 3 at seed 0, one more
beyond an edge), and the seven formats x two arms x seeds 1-3 are compared at each (arm,
format)'s own factor: the same pooled model as study_cpu's, on the two arms.

Everything else is study_cpu's (scale, data, pinned tokenizer, seeds' fields, overrides). A
cell that study_cpu or the E7M0 probe already ran with exactly the same program (same
overrides, tuned value, dropout masks, base config and seed fields; checked field by field,
`altgrad_jax.analysis.reuse`) is copied from their records instead of trained: most of the
E7M0 tuning cells, and every test cell whose format's chosen factor equals study_cpu's.

Command (one process per core, each takes the next unclaimed cell):
  ALTGRAD_DATA_DIR=/path/to/eurlex57k python sweep.py --config=configs/study_cpu_format_tuned.py
Plan, reused cells and cost:
  python sweep.py --config=configs/study_cpu_format_tuned.py --dry_run
Report (first paragraph: the format-tuned answer):
  python -m altgrad_jax.analysis.report --study=reports/study_cpu_format_tuned
Expected: not yet measured.
"""

import ml_collections

from configs import study_cpu

FORMATS = study_cpu.PRIMARY_FORMATS


def get_config() -> ml_collections.ConfigDict:
    c = study_cpu.get_config()
    c.study = "study_cpu_format_tuned"
    c.stages = (
        f"tune_format | {FORMATS} | adamw_sr,ulp_sr | 0",
        f"format_tuned | {FORMATS} | adamw_sr,ulp_sr | 1,2,3",
    )
    c.tuning_scope = "format"  # one factor per (arm, format), from that format's cells
    c.tuning_extensions = 1  # one factor beyond an edge of 1/3, 1, 3 (cost bound: 4 per format)
    c.reuse_from = ("reports/study_cpu", "reports/probe_e7m0")
    c.amendments = ()
    c.run_dir = "runs/study_cpu_format_tuned"
    c.report_dir = "reports/study_cpu_format_tuned"
    return c
