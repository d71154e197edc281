"""Train and evaluate one run: ``python launch.py --config=configs/e5m2_manifold.py``.

Flags:
  --config    an ml_collections config file (``configs/*.py``); override any field with
              ``--config.<group>.<field>=value`` (a misspelt field is an error naming it).
  --workdir   the run folder (default: runs/<config.name>). Re-running the same command on the same
              folder resumes from its newest checkpoint.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder (default: runs/<config.name>).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from altgrad_jax.train.loop import TrainingDiverged, train_and_evaluate

    try:
        results = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except TrainingDiverged as e:
        logging.error("training diverged: %s", e)
        sys.exit(f"training diverged: {e}")
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    test = results.get("test", {})
    logging.info("done: status=%s test micro-F1=%s results in %s", results["status"],
                 test.get("test/micro_f1"), os.path.join(results["workdir"], "results.json"))


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
