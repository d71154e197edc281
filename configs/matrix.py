"""A plain "format x arm x seed" matrix on the study machinery (no tuning stage), for ``sweep.py``.

Command (every arm of the registry on the given formats; the study proper is
configs/study_cpu.py):
  python sweep.py --config=configs/matrix.py --dry_run
  python sweep.py --config=configs/matrix.py --config.stages='primary | E4M3,E5M2 | adamw_sr,ulp_sr | 1,2'
Expected: records in reports/matrix/runs/<format>__<arm>__s<seed>.json, reports/matrix/REPORT.md;
run folders in runs/matrix. Without a data directory every run falls back to the synthetic corpus
and the report says so.

The arms (what "adamw_rtn", "ulp_sr", ... change in the run config) are defined once, in
``altgrad_jax.analysis.matrix.ARMS``; untuned arms train at their base lr (or c).
"""

import ml_collections

from altgrad_jax.analysis.matrix import ARMS, DEFAULT_SEED_FIELDS

FORMATS = "E0M7,E2M5,E3M4,E4M3,E5M2,E6M1,E7M0,BF16,none"


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.study = "matrix"  # report title
    c.base_config = "configs/default.py"  # run config every cell starts from
    c.overrides = ()  # "group.field=value" applied to every cell, e.g. ("train.num_steps=600",)
    c.stages = (f"primary | {FORMATS} | {','.join(ARMS)} | 1,2,3",)  # "name | formats | arms |
    #            seeds"; the stage named "primary" is the one the pooled model analyses
    c.tuning_factors = ("1/3", "1", "3")  # used by stages named tune*
    c.tuning_metric = "eval_tuned/macro_f1"
    c.seed_fields = DEFAULT_SEED_FIELDS
    c.run_dir = "runs/matrix"  # run folders (ignored)
    c.report_dir = "reports/matrix"  # records, REPORT.md, CSV, plots
    c.sec_per_step = 0.57  # cost model default (s/step) until records measure it
    c.overhead_s = 90.0  # per-run data build + evaluation (s)
    return c
