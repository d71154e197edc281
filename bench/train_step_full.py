"""The train step at the seeds' full scale: samples/s and MFU against the chip's peak.

  python bench/train_step_full.py [--layers 6 --d 384 --length 512 --batch 32] [--steps 20]
                                  [--cases fp32,e4m3_sim,e4m3_native] [--peak-tflops X]

Full scale = 6 layers, d=384 (6 heads, MLP 1536), length 512, batch 32, vocab 16k, 100 labels,
AdamW, no in-step diagnostics. FLOPs per step come from XLA's cost analysis of the compiled
program (``flops``); MFU = FLOP/s / peak, with the peak from ``--peak-tflops`` or a table of dense
BF16 tensor-core peaks (H100/H200 SXM 989 TFLOP/s; the simulated FP8 path computes its GEMMs in
float32, so its MFU is against the same BF16 peak: an upper bound on what it could use). CPU: no
table entry (MFU null). Ends with one JSON line.
"""

import os as _os
import sys as _sys

_ROOT = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _ROOT not in _sys.path:  # run as `python bench/<name>.py` from anywhere, no install needed
    _sys.path.insert(0, _ROOT)

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from altgrad_jax.train import builders  # noqa: E402
from altgrad_jax.train import step as step_lib  # noqa: E402
from altgrad_jax.train.state import TrainState  # noqa: E402
from bench.train_step import compiled_flops, median_step_seconds  # noqa: E402
from configs import default  # noqa: E402

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "L4": 121.0,
                    "GH200": 989.0}
CASES = {  # name -> (weight format, activations, gradients)
    "fp32": ("none", "none", "none"),
    "e4m3_sim": ("E4M3", "same", "E5M2"),
}


def peak_tflops(kind: str):
    for name, value in sorted(PEAK_BF16_TFLOPS.items(), key=lambda kv: -len(kv[0])):
        if name in kind:
            return value
    return None


def _config(args, case):
    c = default.get_config()
    c.data.max_length = args.length
    c.model.num_layers, c.model.d_model = args.layers, args.d
    c.model.num_heads, c.model.mlp_dim, c.model.dropout = args.d // 64, 4 * args.d, 0.0
    c.quant.weight_format, c.quant.activations, c.quant.gradients = CASES[case]
    return c


def build(args, case):
    c = _config(args, case)
    policy = builders.build_policy(c.quant)
    model = builders.build_model(c, vocab_size=16000, num_labels=100, policy=policy)
    tx, sched = builders.build_optimizer(c, policy.weights.lookup, 1000)
    ids = jax.random.randint(jax.random.key(0), (args.batch, args.length), 1, 16000)
    labels = (jax.random.uniform(jax.random.key(1), (args.batch, 100)) < 0.05).astype(jnp.float32)
    params = jax.jit(lambda k: model.init(k, ids[:1])["params"])(jax.random.key(2))
    fields = {f.name for f in dataclasses.fields(step_lib.StepOptions)}
    options = step_lib.StepOptions(**{k: False for k in ("flips", "grad_stats", "quant_health")
                                      if k in fields})
    state = TrainState.create(params=params, opt_state=jax.jit(tx.init)(params),
                              rng_key=jax.random.key(3),
                              diag=step_lib.init_diag_state(options, 8))
    kw = dict(model=model, tx=tx, lr_schedule=sched, options=options,
              format_fn=policy.weights.lookup, grad_format=policy.gradients)
    accepted = inspect.signature(step_lib.train_step).parameters
    fn = functools.partial(step_lib.train_step, **{k: v for k, v in kw.items() if k in accepted})
    return jax.jit(fn, donate_argnums=0), state, {"input_ids": ids, "labels": labels}


def measure(args, case):
    step, state, batch = build(args, case)
    flops, compile_s = compiled_flops(step, state, batch)
    t, m = median_step_seconds(step, state, batch, args.steps)
    peak = args.peak_tflops or peak_tflops(jax.devices()[0].device_kind)
    return {"ms_per_step": t * 1e3, "samples_per_s": args.batch / t,
            "tokens_per_s": args.batch * args.length / t, "flops_per_step": flops,
            "tflops": flops / t / 1e12, "mfu": None if not peak else flops / t / 1e12 / peak,
            "compile_s": compile_s, "loss": float(m["train/loss"])}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--d", type=int, default=384)
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cases", default="fp32,e4m3_sim")
    p.add_argument("--peak-tflops", type=float, default=0.0)
    args = p.parse_args()
    kind = jax.devices()[0].device_kind
    results = {}
    for case in args.cases.split(","):
        if case not in CASES:
            raise SystemExit(f"unknown case {case!r}; valid: {sorted(CASES)}")
        results[case] = r = measure(args, case)
        print(f"{case:10s} {r['ms_per_step']:9.1f} ms/step {r['samples_per_s']:9.1f} samples/s "
              f"{r['tflops']:8.2f} TFLOP/s MFU {r['mfu']}", flush=True)
    print(json.dumps({"bench": "train_step_full", "device": kind, "layers": args.layers,
                      "d": args.d, "length": args.length, "batch": args.batch,
                      "peak_tflops": args.peak_tflops or peak_tflops(kind), "cases": results}))


if __name__ == "__main__":
    main()
