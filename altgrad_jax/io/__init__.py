"""Run I/O: Orbax checkpoints and metric writers (console, JSON lines, W&B), a progress bar, and
the run's provenance (`environment`: versions and hardware).

Example:
  >>> import tempfile
  >>> from altgrad_jax import io as agio
  >>> workdir = tempfile.mkdtemp()
  >>> writers = agio.make_writers(workdir, config={"lr": 1e-3})
  >>> writers.write(1, {"train/loss": 0.7}); writers.close()
  >>> ckpt = agio.Checkpointer(workdir)
  >>> ckpt.restore_latest({"w": 0.0}) is None
  True
  >>> ckpt.close()
"""

from altgrad_jax.io.checkpoint import Checkpointer, to_json_compatible
from altgrad_jax.io.console import (Console, data_summary_line, route_library_logs,
                                    short_config_line)
from altgrad_jax.io.provenance import environment
from altgrad_jax.io.writers import (
    ConsoleWriter,
    JsonlWriter,
    MetricWriter,
    MultiWriter,
    ProgressBar,
    WandbWriter,
    make_writers,
    read_jsonl,
)

__all__ = [
    "Checkpointer",
    "Console",
    "data_summary_line",
    "environment",
    "route_library_logs",
    "short_config_line",
    "ConsoleWriter",
    "JsonlWriter",
    "MetricWriter",
    "MultiWriter",
    "ProgressBar",
    "WandbWriter",
    "make_writers",
    "read_jsonl",
    "to_json_compatible",
]
