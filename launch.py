"""Train and evaluate one run: ``python launch.py --config=configs/e5m2_manifold.py``.

Flags:
  --config    an ml_collections config file (``configs/*.py``); override any field with
              ``--config.<group>.<field>=value`` (a misspelt field is an error naming it).
  --workdir   the run folder (default: runs/<config.name>). Re-running the same command on the same
              folder resumes from its newest checkpoint (a completed run says so, writes nothing).
  --verbosity absl's flag; given explicitly, library logs (orbax, absl, XLA) show on the terminal
              too (``log.verbose``). They always go to ``<workdir>/log.txt``.

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
    from altgrad_jax.analysis.plot_run import plot_run
    from altgrad_jax.train.loop import TrainingDiverged, train_and_evaluate

    config = _CONFIG.value
    if flags.FLAGS["verbosity"].present:
        config.log.verbose = True
    try:
        results = train_and_evaluate(config, _WORKDIR.value)
    except TrainingDiverged as e:
        sys.exit(f"training diverged: {e}")
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    if not parallel.is_main_process():
        return  # process 0 draws the curves and prints the result
    workdir = results["workdir"]
    png = plot_run(workdir)
    test = results.get("test", {})
    f1 = test.get("test/micro_f1")
    print(f"done: {results['status']} | test micro-F1 "
          f"{'-' if f1 is None else format(f1, '.4f')} | results "
          f"{os.path.join(workdir, 'results.json')} | curves {png} | logs "
          f"{os.path.join(workdir, 'log.txt')}", flush=True)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
