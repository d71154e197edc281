"""Throughput of `altgrad_jax.quant.quantize` against the native XLA cast round trip (CPU).

Usage::

    python bench/quantize.py [--n 16777216] [--repeats 20]

Everything runs in one process on the same float32 input (normal * 1000, so every binade from the
subnormals to saturation is hit for E5M2). Each variant is jitted, warmed up once, then timed
``--repeats`` times with ``block_until_ready``; the table reports the median as M elements/s and the
ratio to the native ``clip -> astype(float8_e5m2) -> astype(float32)`` round trip. The last line
of the output is one JSON object (``{"bench": "quantize", ...}``: ratios to the native cast and
M elements/s) so figures can be compared across machines. Target: stochastic rounding >= 0.7x the
native cast (its random bits come from a counter-based hash, `altgrad_jax.quant.random`).
"""

from __future__ import annotations


import os as _os
import sys as _sys

_ROOT = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _ROOT not in _sys.path:  # run as `python bench/<name>.py` from anywhere, no install needed
    _sys.path.insert(0, _ROOT)

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from altgrad_jax.formats import get_format  # noqa: E402
from altgrad_jax.quant import quantize  # noqa: E402


def _time(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile + warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1 << 24, help="number of float32 elements")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per variant")
    args = parser.parse_args(argv)

    x = jax.random.normal(jax.random.key(0), (args.n,), jnp.float32) * 1000.0
    key = jax.random.key(1)
    e5m2_max = get_format("E5M2").max

    variants = {
        "native round trip e5m2 (clip+cast)": (jax.jit(
            lambda x: jnp.clip(x, -e5m2_max, e5m2_max).astype(jnp.float8_e5m2).astype(jnp.float32)),
            (x,)),
        "quantize E5M2 impl=bits": (jax.jit(lambda x: quantize(x, "E5M2")), (x,)),
        "quantize E5M2 impl=native": (jax.jit(lambda x: quantize(x, "E5M2", impl="native")), (x,)),
        "quantize E3M4 (bits)": (jax.jit(lambda x: quantize(x, "E3M4")), (x,)),
        "quantize E7M0 (bits)": (jax.jit(lambda x: quantize(x, "E7M0")), (x,)),
        "quantize E5M2 stochastic": (jax.jit(
            lambda x, k: quantize(x, "E5M2", rounding="stochastic", key=k)), (x, key)),
        "threefry bits only (reference)": (jax.jit(
            lambda x, k: jax.random.bits(k, x.shape, jnp.uint32)), (x, key)),
    }
    results = {name: _time(fn, fargs, args.repeats) for name, (fn, fargs) in variants.items()}
    base = results["native round trip e5m2 (clip+cast)"]
    print(f"n={args.n} float32 elements, repeats={args.repeats}, backend={jax.default_backend()}, "
          f"devices={jax.device_count()}, jax {jax.__version__}")
    print(f"{'variant':40s} {'median ms':>10s} {'M elem/s':>10s} {'vs native':>10s}")
    for name, t in results.items():
        print(f"{name:40s} {t * 1e3:10.2f} {args.n / t / 1e6:10.1f} {base / t:10.2f}")
    short = {"quantize E5M2 impl=bits": "nearest", "quantize E5M2 impl=native": "native_impl",
             "quantize E3M4 (bits)": "e3m4", "quantize E7M0 (bits)": "e7m0",
             "quantize E5M2 stochastic": "stochastic"}
    record = {"bench": "quantize", "n": args.n, "backend": jax.default_backend(),
              "native_melem_s": round(args.n / base / 1e6, 1)}
    record.update({v: round(base / results[k], 3) for k, v in short.items()})
    print(json.dumps(record))


if __name__ == "__main__":
    main()
