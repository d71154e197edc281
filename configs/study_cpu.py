"""The CPU-scale study (issue 10): which 8-bit format benefits most from ULP-aware updates?

Command (EURLEX57K; one process per core, each takes the next unclaimed cell):
  ALTGRAD_DATA_DIR=/path/to/eurlex57k python sweep.py --config=configs/study_cpu.py
Plan and cost only (cells in run order, done / to do, estimated core-hours):
  python sweep.py --config=configs/study_cpu.py --dry_run
Rebuild the report from the committed records alone (no run folder needed):
  python -m altgrad_jax.analysis.report --study=reports/study_cpu
Expected: reports/study_cpu/runs/<name>.json per finished run (tracked), REPORT.md, runs.csv and
plots/*.png in reports/study_cpu; checkpoints in runs/study_cpu/<name> (ignored).

Scale: 2 layers, d=128, length 128, batch 32, 1,000 steps, validation at steps 340, 680 and 1,000,
rank health every 250 steps, diagnostics every 50 (DESIGN.md 5b: ~0.57 s/step per run with one
run per core, ~90 s of data build and evaluation per run). The seeds' full scale (6 layers,
d=384, length 512) is 108x the FLOPs per step (XLA cost analysis: 1,314 vs 12.2 GFLOP) and out of
reach on CPU.

Stages, in run order, so that an interrupted study answers the primary contrast first:
  tune_primary  the primary arms, c (or the lr) x {1/3, 1, 3}, seed 0, E3M4 and E6M1;
  primary       7 distinct 8-bit formats x {adamw_rtn, adamw_sr, ulp_sr} x seeds 1-3, seed by
                seed (``seed_blocks``: all 21 cells of seed 1 first);
  tune_reference  AdamW's lr x {1/3, 1, 3} (regime a), seed 0, E3M4 and E6M1 (moved out of
                tune_primary in the fourth stretch: it gates no primary cell);
  reference     FP32 AdamW; BF16 x the primary arms;
  tune_more     the other arms' tuning;
  seeds12       the seeds' 12 conditions in regime (a): 6 formats x {adamw, manifold_gradient};
  e1m6          E1M6 and E0M7 side by side in regime (b), one seed of their own (4): the
                same run bit for bit under amax scaling, both on one machine;
  per_tensor    tensor_sr and grid on E0M7, E4M3, E7M0.
Seed 0 is the tuning seed and never enters the test analysis. The factor chosen per arm (the best
mean validation macro-F1 at the tuned threshold over the tuning formats) is read from the tuning
records and applied to the arm's later cells automatically. A best factor at the edge of the
bracket extends it (``tuning_extensions``: 3 -> 9 -> 27, or 1/3 -> 1/9 -> 1/27), so that no
control is compared under-tuned; the added cells run before any later cell of the arm.
"""

import ml_collections

from altgrad_jax.analysis.matrix import DEFAULT_FACTORS, DEFAULT_SEED_FIELDS

PRIMARY_FORMATS = "E0M7,E2M5,E3M4,E4M3,E5M2,E6M1,E7M0"


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.study = "study_cpu"  # name of the study (report title)
    c.base_config = "configs/default.py"  # run config every cell starts from
    c.overrides = (  # applied to every cell before the arm's overrides
        "data.max_length=128",
        "train.batch_size=32",
        "train.num_steps=1000",
        "train.eval_every=340",  # validation at 340, 680 and the final step: three points
        "train.checkpoint_every=200",
        "train.log_every=50",
        "diag.every=50",  # the diagnostics step (flips, stalls, below-half-step)
        "diag.rank_every=250",  # rank health on
        "quant.embedding_format='none'",  # the embedding table stays float32: its own factor
        # WordPiece training is not reproducible across processes: every cell, on every machine
        # and in every stretch of the study, uses this one pinned tokenizer (16k, EURLEX57K train).
        "data.tokenizer_file='reports/study_cpu/tokenizer.json'",
    )
    c.stages = (  # "name | formats | arms | seeds", in run order
        "tune_primary | E3M4,E6M1 | adamw_rtn,adamw_sr,ulp_sr | 0",
        f"primary | {PRIMARY_FORMATS} | adamw_rtn,adamw_sr,ulp_sr | 1,2,3",
        "tune_reference | E3M4,E6M1 | adamw | 0",
        "reference | none | adamw | 1,2,3",
        "reference_bf16 | BF16 | adamw_rtn,adamw_sr,ulp_sr | 1,2,3",
        "tune_more | E3M4,E6M1 | manifold_gradient,tensor_sr,grid | 0",
        "seeds12 | BF16,E5M2,E3M4,E1M6,E0M7,E7M0 | adamw,manifold_gradient | 1,2,3",
        "e1m6 | E1M6,E0M7 | adamw_rtn,adamw_sr,ulp_sr | 4",
        "per_tensor | E0M7,E4M3,E7M0 | tensor_sr,grid | 1,2,3",
    )
    c.tuning_factors = DEFAULT_FACTORS  # multiples of each arm's base lr (or c) tried
    # An arm whose best factor sits at an edge of the bracket gets one more factor beyond it
    # (3 -> 9, 1/3 -> 1/9) on the tuning formats, at most this many more (fifth stretch: the
    # first tuning records put adamw_rtn's best at x3, the largest factor tried).
    c.tuning_extensions = 2
    # Non-tuning stages run seed by seed (every format x arm of seed 1, then seed 2, ...): an
    # interrupted stage covers every format evenly, and drift between stretches of work falls
    # across seeds (blocks in the analysis), not across formats. Fifth stretch, before any
    # primary cell ran.
    c.seed_blocks = True
    # Changes to the protocol after the first cell ran (REPORT.md lists them): what changed,
    # when, and which cells had run.
    c.amendments = (
        "Fourth stretch, after 2 of the tuning runs (`E3M4__adamw_rtn__s0__x1o3`, `__x1`): "
        "dropout masks from counter-based hash bits instead of threefry (`model.dropout_impl`): "
        "the same Bernoulli(0.9) keep mask, a different random stream, 1.2x faster steps. Both "
        "runs are tuning runs (seed 0); every later run uses the new masks.",
        "Fourth stretch, before any run of the stages concerned: AdamW's regime-(a) tuning "
        "moved from before the primary stage to after it (`tune_reference`); it gates no "
        "primary cell.",
        "Fifth stretch, after 16 of the 18 tuning runs of `tune_primary` and before any "
        "primary cell: bracket extension (`tuning_extensions=2`). adamw_rtn's best learning "
        "rate was x3, the largest factor tried, so the control could enter the contrast "
        "under-tuned; its x9 cells were added (and x27 if x9 is best again).",
        "Fifth stretch, before any primary cell: non-tuning stages run seed by seed "
        "(`seed_blocks`), so an interrupted stage covers every format evenly.",
        "Fifth stretch, after the 20 runs of `tune_primary` and before any primary cell: the "
        "float32 leaves (embedding, head, biases, LayerNorm) of every regime-(b) arm take AdamW "
        "at 1e-3 (`optimizer.float_learning_rate`), so that an AdamW arm's tuned lr scales only "
        "its quantized kernels. The tuning records showed why: in 8 bits the kernels barely "
        "move (E6M1 adamw_rtn at x1: 3 of 393,216 kernel weights changed per diagnostics "
        "step), so the shared lr mostly tuned the float32 leaves, and adamw_rtn's x3 gave its "
        "float32 leaves 3x the rate of ulp_sr's. The 10 AdamW-arm tuning runs at a factor "
        "other than 1 were superseded (records kept in `reports/study_cpu/superseded/`) and "
        "run again; the x1 runs and every ulp_sr run are unchanged (their float32 leaves "
        "already had 1e-3: the same program bit for bit). The rate 1e-3 is the base config's, "
        "not tuned; the superseded runs (float32 leaves at 3e-3 with adamw_rtn x3: validation "
        "macro-F1 0.712 on E3M4 vs 0.682 re-run with them at 1e-3) suggest a higher shared rate "
        "would raise every arm alike.",
        "Sixth stretch, before any `grid` cell: the grid arm's float32 leaves (embedding, "
        "head) take AdamW's decoupled weight decay 0.01 like every other arm's; before, its one "
        "`weight_decay=0` switched off the decay of its grid leaves and of its float32 leaves "
        "alike. Its grid leaves stay undecayed (`optimizer.grid_weight_decay=0`).",
        "Ninth stretch, before any `e1m6` cell: the E1M6 check runs its E0M7 twins itself, at "
        "a seed of its own (4; was E1M6 alone at seed 1 against the primary stage's E0M7 "
        "cells). The study had moved to a third kind of box (Intel Xeon, after two AMD EPYC "
        "kinds), and XLA compiles its CPU code for the host, so a twin from another box could "
        "differ in the last bits for a reason that is not the format. Seed 4 enters no "
        "analysis but the E1M6 section (its E0M7 cells stay out of every primary table).",
    )
    c.tuning_metric = "eval_tuned/macro_f1"  # validation macro-F1 at the tuned threshold
    c.seed_fields = DEFAULT_SEED_FIELDS  # init + dropout, data order, stochastic rounding
    c.run_dir = "runs/study_cpu"  # run folders with checkpoints (ignored by git)
    c.report_dir = "reports/study_cpu"  # records (runs/<name>.json), REPORT.md, CSV, plots
    # Seeds of a non-tuning cell trained together as one vmapped program (sweep.py; 1 = one run
    # per process). On CPU one process per core is faster; on a GPU set it to 3.
    c.vmap_seeds = 1
    c.sec_per_step = 0.57  # cost model until records carry perf.train_steps_per_s
    c.overhead_s = 90.0  # per run: data build (cached tokenizer) + three evaluations + test
    return c
