"""Native FP8 GEMM vs BF16 / FP32 / the simulated FP8 path at a GEMM-bound size, one process.

  python bench/fp8_gemm.py [--m 8192 --k 8192 --n 8192] [--repeats 20]

Cases (forward only, ``y = x @ w``, float32 in / out): ``fp32`` (XLA default precision), ``bf16``
(operands cast to bfloat16), ``simulated`` (`QuantizedDotGeneral`, E4M3 x E4M3: bit-level rounding
then a float32 GEMM), ``native`` (`NativeFP8DotGeneral`: scaled float8_e4m3fn operands into XLA's
dot). Prints a table, then one JSON line with ms, TFLOP/s and the speedups of ``native``. On CPU
the default size is 1024 (XLA:CPU upcasts FP8, so expect no speedup there).
"""

import os as _os
import sys as _sys

_ROOT = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _ROOT not in _sys.path:  # run as `python bench/<name>.py` from anywhere, no install needed
    _sys.path.insert(0, _ROOT)

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from altgrad_jax.quant import QuantizedDotGeneral  # noqa: E402
from altgrad_jax.quant.native import NativeFP8DotGeneral  # noqa: E402

DIMS = (((1,), (0,)), ((), ()))


def _time(fn, args, repeats):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    gpu = jax.default_backend() == "gpu"
    size = 8192 if gpu else 1024
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--m", type=int, default=size)
    p.add_argument("--k", type=int, default=size)
    p.add_argument("--n", type=int, default=size)
    p.add_argument("--repeats", type=int, default=20 if gpu else 3)
    a = p.parse_args()
    x = jax.random.normal(jax.random.key(0), (a.m, a.k), jnp.float32)
    w = jax.random.normal(jax.random.key(1), (a.k, a.n), jnp.float32) * 0.02
    bf16 = lambda x, w: jnp.dot(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16),  # noqa: E731
                                preferred_element_type=jnp.float32)
    cases = {
        "fp32": jax.jit(jnp.dot),
        "bf16": jax.jit(bf16),
        "simulated": jax.jit(lambda x, w: QuantizedDotGeneral(weight="E4M3", activation="E4M3")(
            x, w, DIMS)),
        "native": jax.jit(lambda x, w: NativeFP8DotGeneral(weight="E4M3", activation="E4M3")(
            x, w, DIMS)),
    }
    flops = 2.0 * a.m * a.k * a.n
    ms = {name: _time(fn, (x, w), a.repeats) * 1e3 for name, fn in cases.items()}
    print(f"device: {jax.devices()[0].device_kind}  m={a.m} k={a.k} n={a.n}")
    for name, t in ms.items():
        print(f"{name:10s} {t:10.3f} ms {flops / t / 1e9:10.1f} TFLOP/s")
    hlo = cases["native"].lower(x, w).compile().as_text()
    out = {"bench": "fp8_gemm", "device": jax.devices()[0].device_kind, "m": a.m, "k": a.k,
           "n": a.n, "ms": ms, "tflops": {k: flops / t / 1e9 for k, t in ms.items()},
           "native_speedup_vs_bf16": ms["bf16"] / ms["native"],
           "native_speedup_vs_simulated": ms["simulated"] / ms["native"],
           "fp8_gemm_in_hlo": "f8e4m3fn" in hlo and ("cublas" in hlo or " dot(" in hlo)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
