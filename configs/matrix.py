"""The "format x optimizer x seed" experiment matrix (a sweep of run configs), for ``sweep.py``.

Command (EURLEX57K; 10 formats x 4 optimizers x 3 seeds = 120 runs of ~15 min on 2 CPU cores):
  ALTGRAD_DATA_DIR=/path/to/eurlex57k python sweep.py --config=configs/matrix.py
Plan only, a smaller matrix, extra overrides, a few cells:
  python sweep.py --config=configs/matrix.py --config.seeds=0,1 --config.formats=E4M3,E5M2 \
      --set=train.num_steps=600 --dry_run
  python sweep.py --config=configs/matrix.py --only=E5M2/adamw/0,E5M2/manifold_update/0
Expected: <out_dir>/matrix.json (the plan), one run folder per cell named
<format>__<optimizer>__s<seed>, and <out_dir>/report.md with plots in <out_dir>/plots/.
Without a data directory every run falls back to the synthetic corpus and the report says so.

The optimizer presets (what "adamw", "manifold_update", ... change in the run config, and where
their learning rates come from) are defined once, in ``altgrad_jax.analysis.matrix``
(``OPTIMIZER_PRESETS``). Any field can be overridden from the command line
(``--config.<field>=...``); the config is locked, so a misspelt field is an error naming it.
"""

import ml_collections

from altgrad_jax.analysis.matrix import DEFAULT_FORMATS, DEFAULT_SEED_FIELDS


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.base_config = "configs/default.py"  # run config every cell starts from (a configs/*.py file,
    #                                       relative to the current directory)
    c.formats = DEFAULT_FORMATS  # quant.weight_format of each row: E0M7 ... E7M0, BF16, and
    #                              "none" (float32); any registered format name is valid
    c.optimizers = ("adamw", "manifold_gradient", "manifold_update", "grid")  # optimizer presets
    #                 (altgrad_jax.analysis.matrix.OPTIMIZER_PRESETS)
    c.seeds = (0, 1, 2)  # one run per seed and cell; pairs for the paired differences
    c.seed_fields = DEFAULT_SEED_FIELDS  # run-config fields that receive the seed (parameter
    #                                      init + dropout, data order + synthetic corpus,
    #                                      stochastic rounding)
    c.overrides = ()  # "group.field=value" strings applied to every run after the preset, e.g.
    #                   ("train.num_steps=600", "diag.rank_every=200"); the values are parsed to
    #                   the field's type. sweep.py --set=group.field=value appends more.
    c.baseline = "adamw"  # preset the report's paired differences subtract (same format, seed)
    c.out_dir = "runs/matrix"  # sweep folder: matrix.json, report.md, plots/, a folder per run
    return c
