"""Default configuration: every field, documented. Variants import this and override a few.

Command (EURLEX57K from a local directory, FP32 weights, AdamW):
  ALTGRAD_DATA_DIR=/path/to/eurlex57k python launch.py --config=configs/default.py \
      --workdir=runs/default
Expected: on 2 CPU cores ~0.6-0.7 s/step; after 1,220 steps validation micro-F1 about 0.75
(DESIGN.md section 5 calibration: 2 layers, d=128, length 256, batch 32, lr 1e-3).
Without a data directory the run falls back to the project's SYNTHETIC corpus and says so.

Any field can be overridden from the command line, e.g. ``--config.optimizer.learning_rate=3e-4``;
the config is locked, so a misspelt field is an error that names it.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "default"  # run name: default workdir is runs/<name>, W&B run name

    # ------------------------------------------------------------------------------------ data
    c.data = ml_collections.ConfigDict()
    c.data.source = "auto"  # "auto" (local JSONL if a data dir resolves, else synthetic, loudly),
    #                         "jsonl", "hub", "synthetic"
    c.data.data_dir = ""  # directory with train/validation/test.jsonl[.gz]; "" = $ALTGRAD_DATA_DIR
    c.data.hub_name = "NLP-AUEB/eurlex"  # Hugging Face dataset for source="hub"
    c.data.label_set = "top100"  # "top100" concepts, "level1" domains, "level2" microthesauri, "all"
    c.data.max_length = 256  # tokens per document incl. [CLS] (truncation; 94% of docs are longer)
    c.data.vocab_size = 16000  # WordPiece vocabulary trained on the train split
    c.data.lowercase = True  # tokenizer normalisation
    c.data.max_train_docs = 0  # random subset of train (seeded; 0 = all)
    c.data.max_validation_docs = 2000  # random subset for periodic validation (0 = all 6,000)
    c.data.max_test_docs = 0  # random subset of test (0 = all)
    c.data.seed = 0  # subsets and batching order
    c.data.text_field = "text"  # JSONL field holding the document text
    c.data.label_field = ""  # JSONL field holding the label ids; "" = the label set's field
    c.data.validation_fraction = 0.1  # no validation file: carve this seeded fraction of train
    #                                   (seed data.seed; logged, in data_info.json); 0 = error
    c.data.cache_dir = ""  # tokenizer + encoded-splits cache; "" = $ALTGRAD_CACHE_DIR or
    #                        ~/.cache/altgrad_jax (locked and atomic: safe for parallel runs)
    c.data.cache_encoded = True  # cache the tokenized, padded splits (.npz): a sweep builds once
    c.data.tokenizer_file = ""  # saved tokenizer JSON to load instead of training ("" = train;
    #                             relative to the cwd). WordPiece training differs per process:
    #                             studies compared across machines pin one (sha256 in data_info)
    c.data.synthetic_num_train = 4000  # synthetic corpus sizes (source="synthetic" / fallback)
    c.data.synthetic_num_validation = 500
    c.data.synthetic_num_test = 500
    c.data.synthetic_num_labels = 20

    # ----------------------------------------------------------------------------------- model
    c.model = ml_collections.ConfigDict()
    c.model.num_layers = 2  # pre-LN transformer blocks
    c.model.d_model = 128  # hidden size
    c.model.num_heads = 4  # attention heads (d_model must be divisible)
    c.model.mlp_dim = 512  # MLP hidden size
    c.model.dropout = 0.1  # dropout rate
    # "hash": counter-based mask bits (altgrad_jax.models.dropout); "threefry": flax.linen.Dropout.
    # Measured (python bench/train_step.py --only ulp_sr, study scale): 585 -> 489 ms/step.
    c.model.dropout_impl = "hash"
    c.model.pooling = "mean"  # "mean" (masked mean) or "cls"

    # ---------------------------------------------------------------------------- quantization
    c.quant = ml_collections.ConfigDict()
    c.quant.weight_format = "none"  # default format of quantized weights ("none" = float32),
    #                                 e.g. "E5M2", "E4M3", "BF16", "E3M4", any registered name
    c.quant.rules = (  # ordered (regex over param path, format); first match wins, else default.
        ("head/", "none"),  # classifier head in high precision
        ("ln1|ln2|final_ln", "none"),  # LayerNorm parameters
        ("/bias$", "none"),  # biases
    )
    c.quant.embedding_format = "none"  # embedding tables (token + position): "none" (float32),
    #                                   "same" (= weight_format) or a format name; its own factor
    #                                   (82% of the parameters): weight_format means the kernels
    c.quant.activations = "none"  # "same" (each layer's input in its weight format), "none", or a
    #                               format name for the input of every quantized layer
    c.quant.gradients = "none"  # format of layer output gradients in backward ("E5M2"), or "none"
    c.quant.margin = 0.0  # per-tensor scaling headroom in binades
    c.quant.native_fp8 = False  # E4M3/E5M2 layers feed 8-bit operands to XLA's dot (FP8 GEMM on
    #                             Hopper/Ada; = the simulated path up to summation order)

    # ------------------------------------------------------------------------------- optimizer
    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adamw"  # "adamw", "manifold_adamw", "grid", "sgd"
    c.optimizer.learning_rate = 1e-3  # peak learning rate, AdamW-sized in every arm (lr_units)
    c.optimizer.schedule = "warmup_cosine"  # "constant", "warmup_cosine", "warmup_linear"
    c.optimizer.warmup_steps = 0  # linear warmup steps (0 = use warmup_frac)
    c.optimizer.warmup_frac = 0.05  # warmup as a fraction of total steps
    c.optimizer.total_steps = 0  # decay horizon (0 = train.num_steps)
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.eps = 1e-8
    c.optimizer.weight_decay = 0.01  # decoupled (AdamW, also the grid arm's float32 leaves) / L2
    #                                  into the gradient (sgd)
    c.optimizer.decay_mask = "ndim>=2"  # decay only params with >= 2 dims; "all" = every param
    c.optimizer.grad_clip_norm = 1.0  # global-norm clipping before the update (0 = off)
    c.optimizer.precondition = "gradient"  # manifold_adamw: "gradient" (seeds), "update" (ULP),
    #                                        "tensor" (x tensor's median spacing), "none" (AdamW)
    c.optimizer.lr_units = "parameter"  # "update"/"tensor": "parameter" (lr AdamW-sized; per
    #                                     tensor c * lr / median_spacing(w_0) grid steps) or
    #                                     "grid_steps" (legacy: learning_rate in grid steps)
    c.optimizer.grid_step_multiplier = 1.0  # c: 1 = an AdamW-sized median step at init, any format
    c.optimizer.mantissa_bits = 0  # manifold "gradient" mode: M of the stiffness (0 = per-leaf format)
    c.optimizer.max_stiffness = 1e6  # clamp of the stiffness factor
    c.optimizer.unformatted_scale = 1.0  # legacy, lr_units="grid_steps" only: float32 leaves
    #                                      step by learning_rate * unformatted_scale (else 1.0)
    c.optimizer.momentum = 0.9  # grid optimizer / sgd
    c.optimizer.rung_clip = 10  # grid optimizer: max grid rungs per step
    c.optimizer.grid_weight_decay = ml_collections.config_dict.placeholder(float)  # grid: L2
    #                                 decay of the quantized leaves into their velocity; None =
    #                                 weight_decay (it acts at the grid rate)
    c.optimizer.grid_learning_rate = 1.0  # grid optimizer: peak SGD rate of quantized leaves
    #                                       (step grid_learning_rate * velocity before rounding);
    #                                       its float32 leaves get AdamW at learning_rate
    c.optimizer.float_learning_rate = 0.0  # peak lr of the float32 leaves (embedding when not
    #                                        quantized, head, biases, LayerNorm); 0 = learning_rate
    c.optimizer.rounding = "stochastic"  # grid / snap rounding: "stochastic" or "nearest"
    c.optimizer.seed = 0  # PRNG seed of stochastic optimizer rounding
    c.optimizer.weights_on_grid = False  # regime (b): snap params onto their grid after each update
    c.optimizer.inject_hyperparams = True  # keep the learning rate readable in the state
    c.optimizer.diagnostics = False  # True: flips/stalls in the optimizer state (library use;
    #                                  the training loop computes them in its own step)

    # -------------------------------------------------------------------------------- training
    c.train = ml_collections.ConfigDict()
    c.train.seed = 0  # parameter init and dropout
    c.train.batch_size = 32
    c.train.num_steps = 1220  # total optimizer steps (~0.9 epoch of EURLEX57K at batch 32)
    c.train.max_steps_this_run = 0  # stop this invocation after N steps (time-boxed jobs); rerun
    #                                 the same command to resume. 0 = no limit
    c.train.pos_weight = 1.0  # BCE weight of positive labels (1.0 = plain BCE)
    c.train.log_every = 50  # steps between metric pulls/log lines
    c.train.eval_every = 400  # steps between validation passes (0 = only at the end)
    c.train.eval_batch_size = 64
    c.train.checkpoint_every = 200  # steps between periodic checkpoints (0 = only at the end)
    c.train.keep_checkpoints = 3  # periodic checkpoints kept
    c.train.nan_patience = 20  # stop after this many consecutive non-finite losses
    c.train.skip_nonfinite = True  # a step with a non-finite loss leaves params/opt state untouched
    c.train.tune_threshold = True  # also report test metrics at the validation-tuned threshold
    c.train.progress_bar = True  # tqdm bar (only on a TTY)

    # ------------------------------------------------------------------------------ diagnostics
    c.diag = ml_collections.ConfigDict()
    c.diag.every = 50  # steps between diagnostics steps (the seeds' diagnostic_interval): a
    #                    separately compiled step (same update) that adds flips, stalls, gradient
    #                    statistics and quantization health; the plain step computes none of them
    c.diag.flips = True  # flips/updates/stall ratio/below-half-step per layer (diagnostics steps)
    c.diag.stall_window = 5  # windowed stall ratio over the last K diagnostics SAMPLES:
    #                          stall_ratio(sum of sampled flips, sum of sampled updates); the stall
    #                          fallback needs K samples of the current format (K * every steps)
    c.diag.grad_stats = True  # gradient norms, SNR, dead fraction (diagnostics steps)
    c.diag.quant_health = True  # overflow/underflow/grid alignment (diagnostics steps)
    c.diag.rank_every = 200  # steps between rank-health measurements (0 = off); own jitted fn.
    #                          Cost per measurement (logged as perf/rank_seconds), default model (2
    #                          layers d=128, embed excluded): 6.2 s measured on 2 cores under load
    #                          12 (other jobs), i.e. <= ~5% of a 200-step interval at 0.57 s/step
    c.diag.rank_exclude = "embed/"  # regex of params left out of rank health ("" = none);
    #                                 the 16k x d embedding SVD dominates the cost otherwise
    c.diag.rank_warmup_steps = 100  # rank trend baseline taken after this many steps
    c.diag.rank_ema = 0.9  # EMA decay of the rank trend detector
    c.diag.rank_critical_patterns = ("head/", "attn/out/")  # layers with the 0.15 threshold
    c.diag.rank_critical_drop = 0.15
    c.diag.rank_drop = 0.30
    c.diag.shadow_every = 0  # steps between FP32-shadow measurements (0 = off)
    c.diag.dead_threshold = 1e-8  # |g| below this counts as dead

    # ---------------------------------------------------------------------------- interventions
    c.stability = ml_collections.ConfigDict()
    c.stability.partition_clip = False  # format-relative gradient clipping link before the update
    c.stability.partition_clip_base = 1.0
    c.stability.partition_clip_overflow = 0.01  # acts when the grad overflow rate exceeds this
    c.stability.fallback = False  # emergency format fallback (E7M0->E5M2, E1M6/E0M7->E3M4, ...)
    c.stability.fallback_stall_threshold = 0.99  # windowed stall ratio that triggers a fallback
    c.stability.fallback_min_step = 100  # never before this step (and never at step 0)

    # ---------------------------------------------------------------------------------- mesh
    c.mesh = ml_collections.ConfigDict()  # altgrad_jax.parallel (README "Scaling past one device")
    c.mesh.data = -1  # devices on the data axis (-1 = all devices of all processes; 1 = one)
    c.mesh.fsdp = False  # also split params/optimizer state over data (leading dim divisible)
    c.mesh.fsdp_min_size = 1024  # leaves with fewer elements stay replicated under fsdp
    c.mesh.vmap_seeds = 1  # train seeds train.seed .. +S-1 in one vmapped program (1 = off)

    # --------------------------------------------------------------------------------- logging
    c.log = ml_collections.ConfigDict()
    c.log.wandb_mode = "offline"  # "offline", "online", "disabled"
    c.log.wandb_project = "altgrad_jax"
    c.log.verbose = False  # True: library INFO (orbax, absl, XLA) on the terminal too; it always
    #                        goes to <workdir>/log.txt (launch.py --verbosity=0 sets this)
    return c
