"""Benchmark: two training processes side by side (the study's layout), unpinned vs one core each.

  python bench/two_runs.py [--steps 30] [--only "E4M3 weights ulp_sr"] [--repeats 1]

XLA:CPU gives every process a thread pool as wide as the cores it may run on. Two unpinned
processes on a 2-core machine therefore run four compute threads on two cores, and every
parallel op of one process waits for threads the other one has descheduled. Pinning each process
to its own core (``os.sched_setaffinity`` before JAX starts, as ``taskset -c N`` does) gives each
a one-thread pool and no contention. Each mode runs two children of
``bench/train_step.py`` at the same time (the same cases, the same steps) and reads their JSON
lines; the figure to compare is the ratio pinned / unpinned of ms per step, per case. Ends with
one JSON line.
"""

import argparse
import json
import os
import subprocess
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _children(cores: list[set[int] | None], args) -> list[dict]:
    """Runs one `train_step.py` per entry of ``cores`` at once; returns their JSON results."""
    cmd = [sys.executable, os.path.join(_HERE, "train_step.py"), "--steps", str(args.steps),
           "--only", args.only]
    procs = []
    for cpus in cores:
        pre = (lambda c=cpus: os.sched_setaffinity(0, c)) if cpus else None
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, preexec_fn=pre))
    out = []
    for p in procs:
        stdout, _ = p.communicate()
        if p.returncode:
            raise SystemExit(f"a train_step.py child failed (exit {p.returncode})")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def _mean_ms(results: list[dict]) -> dict[str, float]:
    names = results[0]["cases"]
    return {n: sum(r["cases"][n]["ms"] for r in results) / len(results) for n in names}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--only", default="E4M3 weights ulp_sr",
                   help="cases of bench/train_step.py (FP32 adamw always runs)")
    p.add_argument("--repeats", type=int, default=1, help="unpinned/pinned pairs, alternated")
    args = p.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise SystemExit("two_runs.py needs at least 2 cores")
    modes = {"unpinned": [None, None], "pinned": [{cores[0]}, {cores[1]}]}
    ms: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    for _ in range(args.repeats):
        for mode, layout in modes.items():
            ms[mode].append(_mean_ms(_children(layout, args)))
    cases = list(ms["pinned"][0])
    summary = {}
    print(f"{'case':34s} {'unpinned ms':>12s} {'pinned ms':>10s} {'pinned/unpinned':>16s}")
    for c in cases:
        u = sum(r[c] for r in ms["unpinned"]) / args.repeats
        q = sum(r[c] for r in ms["pinned"]) / args.repeats
        print(f"{c:34s} {u:12.1f} {q:10.1f} {q / u:16.3f}")
        summary[c] = {"unpinned_ms": round(u, 1), "pinned_ms": round(q, 1),
                      "ratio": round(q / u, 3)}
    print(json.dumps({"bench": "two_runs", "steps": args.steps, "repeats": args.repeats,
                      "cores": len(cores), "cases": summary}))


if __name__ == "__main__":
    main()
