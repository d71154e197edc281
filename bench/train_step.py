"""Benchmark: the jitted train step for FP32, BF16, E5M2, E3M4 (weights + activations quantized),
manifold_adamw and the study's regime-(b) arms, as ratios to the FP32 AdamW step, in one process.

  python bench/train_step.py [--steps 20] [--batch 32] [--length 128] [--layers 2] [--d 128]
      [--dropout 0.1] [--with-diag] [--only SUBSTRING,...]

Defaults are the study's settings (2 layers, d=128, length 128, batch 32, dropout 0.1; the
"threefry dropout" case is flax.linen.Dropout instead of the default counter-based masks). Target on CPU: a
quantized step within 1.15x of the unquantized step. ``--with-diag`` times the diagnostics step
(flips, stalls, gradient statistics, quantization health) instead of the plain step the loop runs
between diagnostics samples. Besides ms/step and the ratio it prints the model FLOPs of the step
(XLA's cost analysis of the compiled FP32 step), the achieved FLOP/s, and the float32 matmul peak
of this process (a jitted 2048^3 matmul, all cores XLA uses) measured in the same run, as MFU.
Ends with one JSON line.
"""

import os as _os
import sys as _sys

_ROOT = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _ROOT not in _sys.path:  # run as `python bench/<name>.py` from anywhere, no install needed
    _sys.path.insert(0, _ROOT)


import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections

from altgrad_jax.train import builders as loop_lib
from altgrad_jax.train.state import TrainState
from altgrad_jax.train.step import StepOptions, init_diag_state, make_diag_step, make_train_step
from configs import default


def _case(fmt: str, activations: bool, optimizer: str, precondition: str = "update",
          on_grid: str = "", dropout_impl: str = "hash"):
    c = default.get_config()
    c.model.dropout_impl = dropout_impl
    c.quant.weight_format = fmt
    c.quant.activations = "same" if activations and fmt != "none" else "none"
    c.optimizer.name = optimizer
    c.optimizer.precondition = precondition
    if on_grid:  # regime (b): the study's arms snap onto the grid after every update
        c.optimizer.weights_on_grid = True
        c.optimizer.rounding = on_grid
    return c


def matmul_peak_flops(n: int = 2048, repeats: int = 5) -> float:
    """float32 FLOP/s of a jitted n x n x n matmul in this process (best of ``repeats``)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    jax.block_until_ready(f(a))
    best = min(_timed(f, a) for _ in range(repeats))
    return 2.0 * n ** 3 / best


def _timed(f, *args) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(f(*args))
    return time.perf_counter() - t0


def time_step(cfg: ml_collections.ConfigDict, args) -> float:
    cfg.data.max_length = args.length
    cfg.model.num_layers, cfg.model.d_model = args.layers, args.d
    cfg.model.mlp_dim = 4 * args.d
    cfg.model.dropout = args.dropout
    policy = loop_lib.build_policy(cfg.quant)
    model = loop_lib.build_model(cfg, vocab_size=16000, num_labels=100, policy=policy)
    tx, sched = loop_lib.build_optimizer(cfg, policy.weights.lookup, 1000)
    ids = jax.random.randint(jax.random.key(0), (args.batch, args.length), 1, 16000)
    labels = (jax.random.uniform(jax.random.key(1), (args.batch, 100)) < 0.05).astype(jnp.float32)
    batch = {"input_ids": ids, "labels": labels}
    params = jax.jit(lambda k: model.init(k, ids[:1])["params"])(jax.random.key(2))
    options = StepOptions(flips=args.with_diag, grad_stats=args.with_diag,
                          quant_health=args.with_diag)
    state = TrainState.create(params=params, opt_state=tx.init(params), rng_key=jax.random.key(3),
                              diag=init_diag_state(options, 50))
    kw = dict(model=model, tx=tx, lr_schedule=sched, options=options)
    step = (make_diag_step(**kw, format_fn=policy.weights.lookup, grad_format=None)
            if args.with_diag else make_train_step(**kw))
    flops, _ = compiled_flops(step, state, batch)
    t, _ = median_step_seconds(step, state, batch, args.steps)
    return t, flops


def compiled_flops(step, state, batch) -> tuple[float, float]:
    """``(FLOPs of one step from XLA's cost analysis, compile seconds)`` of a jitted step."""
    t0 = time.perf_counter()
    cost = step.lower(state, batch).compile().cost_analysis()
    compile_s = time.perf_counter() - t0
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float((cost or {}).get("flops", float("nan"))), compile_s


def median_step_seconds(step, state, batch, steps: int):
    """``(median seconds per step over ``steps`` timed calls, last metrics)`` after a warm-up of
    two calls (the first compiles); the state is threaded through, as in training."""
    for _ in range(2):
        state, m = step(state, batch)
    jax.block_until_ready(m)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, m = step(state, batch)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), m


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--dropout", type=float, default=0.1, help="the study's (and default) rate")
    p.add_argument("--with-diag", action="store_true")
    p.add_argument("--only", default="", help="comma-separated substrings of case names")
    args = p.parse_args()
    cases = [
        ("FP32 adamw", _case("none", False, "adamw")),
        ("BF16 w+a adamw", _case("BF16", True, "adamw")),
        ("E5M2 w+a adamw", _case("E5M2", True, "adamw")),
        ("E3M4 w+a adamw", _case("E3M4", True, "adamw")),
        ("E5M2 weights adamw", _case("E5M2", False, "adamw")),
        ("E5M2 w+a manifold(update)", _case("E5M2", True, "manifold_adamw", "update")),
        ("E5M2 w+a manifold(gradient)", _case("E5M2", True, "manifold_adamw", "gradient")),
        ("E5M2 w+a adamw(manifold none)", _case("E5M2", True, "manifold_adamw", "none")),
        ("E4M3 weights adamw_rtn", _case("E4M3", False, "adamw", on_grid="nearest")),
        ("E4M3 weights adamw_sr", _case("E4M3", False, "adamw", on_grid="stochastic")),
        ("E4M3 weights ulp_sr", _case("E4M3", False, "manifold_adamw", "update", "stochastic")),
        ("E4M3 weights ulp_sr threefry dropout",
         _case("E4M3", False, "manifold_adamw", "update", "stochastic", dropout_impl="threefry")),
    ]
    only = [x for x in args.only.split(",") if x]
    cases = [c for c in cases if c[0] == "FP32 adamw" or not only or any(o in c[0] for o in only)]
    print(f"device: {jax.devices()[0].device_kind}  batch {args.batch} x {args.length} tokens, "
          f"{args.layers} layers d={args.d}, diagnostics {'on' if args.with_diag else 'off'}")
    base, model_flops, out = None, None, {}
    peak = matmul_peak_flops()
    print(f"float32 matmul peak of this process: {peak / 1e9:.1f} GFLOP/s")
    print(f"{'case':34s} {'ms/step':>9s} {'samples/s':>10s} {'ratio vs FP32':>14s} {'MFU':>6s}")
    for name, cfg in cases:
        t, flops = time_step(cfg, args)
        base = base or t
        model_flops = model_flops or flops  # the FP32 step's FLOPs: the model's own work
        mfu = model_flops / t / peak
        print(f"{name:34s} {t * 1e3:9.1f} {args.batch / t:10.1f} {t / base:14.3f} {mfu:6.3f}")
        out[name] = {"ms": round(t * 1e3, 2), "ratio": round(t / base, 3), "mfu": round(mfu, 4)}
    print(json.dumps({"bench": "train_step", "model_gflop_per_step": round(model_flops / 1e9, 3),
                      "matmul_peak_gflops": round(peak / 1e9, 1), "batch": args.batch,
                      "length": args.length, "layers": args.layers, "d": args.d,
                      "dropout": args.dropout,
                      "with_diag": args.with_diag, "cases": out}))


if __name__ == "__main__":
    main()
