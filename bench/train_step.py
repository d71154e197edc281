"""Benchmark: the jitted train step for FP32, BF16, E5M2, E3M4 (weights + activations quantized)
and manifold_adamw vs optax.adamw, as ratios to the FP32 AdamW step, measured in one process.

  python bench/train_step.py [--steps 20] [--batch 16] [--length 128] [--layers 2] [--d 128]

Target on CPU: a quantized step within 1.15x of the unquantized step. Diagnostics in the step
(flips etc.) are switched off here, so the ratio isolates the cost of quantization / the optimizer;
``--with-diag`` measures the step as the training loop runs it.
"""

import os as _os
import sys as _sys

_ROOT = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _ROOT not in _sys.path:  # run as `python bench/<name>.py` from anywhere, no install needed
    _sys.path.insert(0, _ROOT)


import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections

from altgrad_jax.train import loop as loop_lib
from altgrad_jax.train.state import TrainState
from altgrad_jax.train.step import StepOptions, init_diag_state, make_train_step
from configs import default


def _case(fmt: str, activations: bool, optimizer: str, precondition: str = "update"):
    c = default.get_config()
    c.quant.weight_format = fmt
    c.quant.activations = "same" if activations and fmt != "none" else "none"
    c.optimizer.name = optimizer
    c.optimizer.precondition = precondition
    return c


def time_step(cfg: ml_collections.ConfigDict, args) -> float:
    cfg.data.max_length = args.length
    cfg.model.num_layers, cfg.model.d_model = args.layers, args.d
    cfg.model.mlp_dim = 4 * args.d
    cfg.model.dropout = 0.0
    policy = loop_lib.build_policy(cfg.quant)
    model = loop_lib.build_model(cfg, vocab_size=16000, num_labels=100, policy=policy)
    tx, sched = loop_lib.build_optimizer(cfg, policy.weights.lookup, 1000)
    ids = jax.random.randint(jax.random.key(0), (args.batch, args.length), 1, 16000)
    labels = (jax.random.uniform(jax.random.key(1), (args.batch, 100)) < 0.05).astype(jnp.float32)
    batch = {"input_ids": ids, "labels": labels}
    params = jax.jit(lambda k: model.init(k, ids[:1])["params"])(jax.random.key(2))
    options = StepOptions(flips=args.with_diag, grad_stats=args.with_diag,
                          quant_health=args.with_diag, log_every=10**9)
    state = TrainState.create(params=params, opt_state=tx.init(params), rng_key=jax.random.key(3),
                              diag=init_diag_state(options, 50))
    step = make_train_step(model=model, tx=tx, format_fn=policy.weights.lookup, lr_schedule=sched,
                           grad_format=None, options=options)
    for _ in range(2):  # compile + warm-up
        state, m = step(state, batch)
    jax.block_until_ready(m)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        state, m = step(state, batch)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--with-diag", action="store_true")
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
    ]
    print(f"device: {jax.devices()[0].device_kind}  batch {args.batch} x {args.length} tokens, "
          f"{args.layers} layers d={args.d}, diagnostics {'on' if args.with_diag else 'off'}")
    base = None
    print(f"{'case':34s} {'ms/step':>9s} {'samples/s':>10s} {'ratio vs FP32':>14s}")
    for name, cfg in cases:
        t = time_step(cfg, args)
        base = base or t
        print(f"{name:34s} {t * 1e3:9.1f} {args.batch / t:10.1f} {t / base:14.3f}")


if __name__ == "__main__":
    main()
