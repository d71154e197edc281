"""Benchmark: one jitted optimizer update on ~10M parameters, as ratios to optax.adamw.

Run: ``python bench/optim.py [--params-m 10] [--repeats 15] [--donate]``. Prints the median wall
time of one ``update`` + ``apply_updates`` per optimizer and its ratio to ``optax.adamw`` measured
in the same process, the optimizers timed round-robin (one step of each per round) so that load
from other processes hits all of them alike. The optimizers are the bare algorithms (their
diagnostics are opt-in); the ``+diag`` rows wrap them in `with_grid_diagnostics` (or pass
``diagnostics=True`` to the grid optimizer), and ``amortized/50`` is a plain step with one
diagnostics step every 50 steps, ``(49 plain + 1 diag) / 50``, as the training loop samples them. ``--donate`` donates params and state to the jitted step as the
training step does (outputs are then written in place; without it every output is a fresh buffer,
whose page faults dominate on CPU). Beside the times it prints XLA's cost analysis of each compiled
step (bytes accessed, flops and transcendentals per parameter, and the bytes as a ratio to
optax.adamw): an elementwise update is memory-bound, so the bytes ratio is the floor of the time
ratio on any machine. Targets: every manifold_adamw mode within 1.3x of optax.adamw,
the grid optimizer within 3x. The last line is one JSON object, ``{"bench": "optim", ...}``, of the
ratios.
"""

from __future__ import annotations


import os as _os
import sys as _sys

_ROOT = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _ROOT not in _sys.path:  # run as `python bench/<name>.py` from anywhere, no install needed
    _sys.path.insert(0, _ROOT)

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from altgrad_jax.formats import get_format
from altgrad_jax.optim import grid_optimizer, manifold_adamw, with_grid_diagnostics


def _params(total_m: float):
    n = int(total_m * 1e6)
    d = 1024
    rows = [n // d // 4] * 4  # four matrices [rows, 1024]
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    return {f"w{i}": jax.random.normal(k, (r, d), jnp.float32) * 0.02
            for i, (k, r) in enumerate(zip(keys, rows))}


def _timer(tx, params, grads, donate):
    state = tx.init(params)

    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    step = jax.jit(step, donate_argnums=(0, 1) if donate else ())
    cost = step.lower(params, state, grads).compile().cost_analysis()
    cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
    carry = step(jax.tree.map(jnp.copy, params), state, grads)  # compile + warm up
    jax.block_until_ready(carry)
    times = []

    def once():
        nonlocal carry
        t0 = time.perf_counter()
        carry = step(*carry, grads)
        jax.block_until_ready(carry)
        times.append(time.perf_counter() - t0)

    return once, times, {k: float(cost.get(k, float("nan"))) for k in
                         ("bytes accessed", "flops", "transcendentals")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--params-m", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--donate", action="store_true", help="donate params and state (as training)")
    ap.add_argument("--only", default="", help="comma-separated substrings of optimizer names")
    args = ap.parse_args()
    params = _params(args.params_m)
    n = sum(x.size for x in jax.tree.leaves(params))
    grads = jax.tree.map(lambda x: jnp.sin(x * 100.0), params)
    fmt = get_format("E4M3")
    update = manifold_adamw(0.25, formats=fmt, precondition="update", weight_decay=4e-5)
    opts = {
        "optax.adamw": optax.adamw(1e-3, weight_decay=0.01),
        "manifold_adamw(none)": manifold_adamw(1e-3, formats=fmt, precondition="none"),
        "manifold_adamw(gradient, M=3)": manifold_adamw(1e-3, mantissa_bits=3, formats=fmt),
        "manifold_adamw(update)": update,
        "manifold_adamw(update)+diag": with_grid_diagnostics(update, fmt,
                                                             track_bit_position=False),
        "grid_optimizer(stochastic)": grid_optimizer(1e-3, fmt),
        "grid_optimizer(nearest)": grid_optimizer(1e-3, fmt, rounding="nearest"),
        "grid_optimizer(stochastic)+diag": grid_optimizer(1e-3, fmt, diagnostics=True,
                                                          track_bit_position=False),
    }
    if args.only:
        keep = args.only.split(",")
        opts = {k: v for k, v in opts.items()
                if k == "optax.adamw" or any(x in k for x in keep)}
    print(f"{n / 1e6:.1f}M params, {jax.devices()[0].platform}, median of {args.repeats} "
          f"round-robin rounds, donate={args.donate}")
    timers = {name: _timer(tx, params, grads, args.donate) for name, tx in opts.items()}
    for _ in range(args.repeats):
        for once, _, _ in timers.values():
            once()
    base = float(np.median(timers["optax.adamw"][1]))
    base_cost = timers["optax.adamw"][2]
    ratios, costs = {}, {}
    print(f"{'':45s} {'time':>8s}   {'ratio':>5s}   XLA cost analysis, ratio to optax.adamw: "
          "bytes accessed | flops | transcendentals (per parameter)")
    for name, (_, times, cost) in timers.items():
        t = float(np.median(times))
        ratios[name] = t / base
        costs[name] = {k: cost[k] / max(base_cost[k], 1.0) for k in ("bytes accessed", "flops")}
        print(f"{name:45s} {t * 1e3:8.2f} ms   {t / base:5.2f}x   "
              f"{costs[name]['bytes accessed']:5.2f}x {cost['bytes accessed'] / n:6.1f} B/p | "
              f"{cost['flops'] / n:6.1f} | {cost['transcendentals'] / n:4.1f}")
    for plain in ("manifold_adamw(update)", "grid_optimizer(stochastic)"):
        if plain in ratios and plain + "+diag" in ratios:
            amortized = (49 * ratios[plain] + ratios[plain + "+diag"]) / 50
            ratios[plain + " amortized/50"] = amortized
            print(f"{plain + ' amortized/50':45s} {'':8s}      {amortized:5.2f}x")
    keys = {"manifold_adamw(none)": "manifold_none", "manifold_adamw(gradient, M=3)":
            "manifold_gradient", "manifold_adamw(update)": "manifold_update",
            "manifold_adamw(update)+diag": "manifold_update_diag",
            "manifold_adamw(update) amortized/50": "manifold_update_amortized50",
            "grid_optimizer(stochastic)": "grid_stochastic", "grid_optimizer(nearest)":
            "grid_nearest", "grid_optimizer(stochastic)+diag": "grid_stochastic_diag",
            "grid_optimizer(stochastic) amortized/50": "grid_stochastic_amortized50"}
    record = {"bench": "optim", "params_m": round(n / 1e6, 2), "donate": args.donate,
              "adamw_ms": round(base * 1e3, 2)}
    record.update({v: round(ratios[k], 3) for k, v in keys.items() if k in ratios})
    record["bytes_ratio"] = {v: round(costs[k]["bytes accessed"], 3) for k, v in keys.items()
                             if k in costs}
    print(json.dumps(record))

if __name__ == "__main__":
    main()
