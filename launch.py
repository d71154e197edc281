"""Train and evaluate one run: ``python launch.py --config=configs/e5m2_manifold.py``.

Flags:
  --config    an ml_collections config file (``configs/*.py``); override any field with
              ``--config.<group>.<field>=value`` (a misspelt field is an error naming it).
  --workdir   the run folder (default: runs/<config.name>). Re-running the same command on the same
              folder resumes from its newest checkpoint (a completed run says so, writes nothing).
  --verbosity absl's flag; given explicitly, library logs (orbax, absl, XLA) show on the terminal
              too (``log.verbose``). They always go to ``<workdir>/log.txt``.

With ``--config.mesh.vmap_seeds=S`` the S seeds (every seed field + 0 .. S-1) train together in one
vmapped program, in ``<workdir>/seed0 .. seed<S-1>`` (altgrad_jax.train.seeds).

The terminal shows the run's own lines: the run folder, one config line, the data summary, one
line per log step, eval lines and the result; at the end ``<workdir>/curves.png`` is drawn.
"""

import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder (default: runs/<config.name>).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from altgrad_jax import parallel

    try:  # multi-host (ALTGRAD_COORDINATOR/...): before anything touches a JAX device
        parallel.initialize_from_env()
    except ValueError as e:
        sys.exit(f"error: {e}")
    from altgrad_jax.train.loop import TrainingDiverged

    config = _CONFIG.value
    if flags.FLAGS["verbosity"].present:
        config.log.verbose = True
    try:
        all_results = _train(config, _WORKDIR.value)
    except TrainingDiverged as e:
        sys.exit(f"training diverged: {e}")
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    if not parallel.is_main_process():
        return  # process 0 draws the curves and prints the result
    for results in all_results:
        _say_done(results)
    diverged = [r["workdir"] for r in all_results if r.get("status") == "diverged"]
    if diverged:  # a seed group finishes its other seeds first; the exit status still says it
        sys.exit(f"training diverged: {', '.join(diverged)} (see failure_report.md there)")


def _train(config, workdir):
    """One run, or with ``mesh.vmap_seeds=S`` the S seeds in ``<workdir>/seed<i>`` together."""
    from altgrad_jax.train import seeds
    from altgrad_jax.train.loop import default_workdir, train_and_evaluate

    if int(config.mesh.vmap_seeds) == 1:
        return [train_and_evaluate(config, workdir)]
    n = int(config.mesh.vmap_seeds)
    return seeds.train_seeds_together(seeds.seed_configs(config), seeds.seed_workdirs(
        workdir or default_workdir(config), n))


def _say_done(results: dict) -> None:
    from altgrad_jax.analysis.plot_run import plot_run

    workdir = results["workdir"]
    png = plot_run(workdir) if results.get("status") != "diverged" else "-"
    test = results.get("test", {})
    f1 = test.get("test/micro_f1")
    print(f"done: {results['status']} | test micro-F1 "
          f"{'-' if f1 is None else format(f1, '.4f')} | results "
          f"{os.path.join(workdir, 'results.json')} | curves {png} | logs "
          f"{os.path.join(workdir, 'log.txt')}", flush=True)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
