"""What a person sees: a few readable lines on stdout, library logs in ``<workdir>/log.txt``.

`route_library_logs` sends Python / absl logging (orbax's checkpoint internals, absl INFO, XLA
backend probing such as "Unable to initialize backend 'tpu'") to a log file in the run folder and
keeps only warnings and errors on the terminal; ``verbose=True`` (``--verbosity`` / ``log.verbose``)
leaves the terminal as it was. `Console` prints the run's own lines (data summary, one line per log
step, eval lines, the final result), through ``tqdm.write`` while a progress bar is shown.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

LOG_FILE = "log.txt"


def route_library_logs(workdir: str, *, verbose: bool = False) -> Callable[[], None]:
    """Library logs at INFO and above go to ``<workdir>/log.txt``; the terminal keeps WARNING+.

    Args:
      workdir: the run folder (created if missing).
      verbose: leave the terminal handlers' levels unchanged (everything still goes to the file).

    Returns:
      A function that undoes the routing (removes the file handler, restores levels).

    Example:
      >>> import tempfile
      >>> undo = route_library_logs(tempfile.mkdtemp()); undo()
    """
    os.makedirs(workdir, exist_ok=True)
    root = logging.getLogger()
    handler = logging.FileHandler(os.path.join(workdir, LOG_FILE), encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    terminal = [h for h in root.handlers if not isinstance(h, logging.FileHandler)]
    old_levels = [h.level for h in terminal]
    old_root = root.level
    if not verbose:
        for h in terminal:
            h.setLevel(max(h.level, logging.WARNING))
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    absl_logger = logging.getLogger("absl")
    old_absl = absl_logger.level
    if absl_logger.level > logging.INFO:
        absl_logger.setLevel(logging.INFO)

    def undo() -> None:
        root.removeHandler(handler)
        handler.close()
        for h, lvl in zip(terminal, old_levels):
            h.setLevel(lvl)
        root.setLevel(old_root)
        absl_logger.setLevel(old_absl)

    return undo


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


class Console:
    """The run's own console lines (stdout), kept out of the progress bar's way.

    Args:
      bar: a `ProgressBar` (or None); while it is shown lines go through ``tqdm.write``.
      stream: where lines go (default ``sys.stdout``).

    Example:
      >>> Console().line("step 10/100", loss=0.4213, lr=1e-3)
      step 10/100 | loss 0.4213 | lr 0.001
    """

    def __init__(self, bar: Any = None, stream: Any = None):
        self.bar = bar
        self.stream = stream

    def line(self, head: str, **items: Any) -> None:
        parts = [head] + [f"{k.replace('_', ' ')} {_fmt(v)}" for k, v in items.items()
                          if v is not None]
        text = " | ".join(parts)
        tqdm_bar = getattr(self.bar, "_bar", None)
        if tqdm_bar is not None:
            tqdm_bar.write(text, file=self.stream or sys.stdout)
        else:
            print(text, file=self.stream or sys.stdout, flush=True)


def short_config_line(config: Mapping[str, Any]) -> str:
    """One line naming what a run is: model, formats, optimizer, steps."""
    m, q, o, t = config["model"], config["quant"], config["optimizer"], config["train"]
    return (f"config: {m['num_layers']}x d{m['d_model']} encoder | weights {q['weight_format']}"
            f" | {o['name']} lr {o['learning_rate']:g} | {t['num_steps']} steps x batch "
            f"{t['batch_size']} | full config in config.json")


def data_summary_line(info: Mapping[str, Any]) -> str:
    """One line of ``data_info.json``: dataset, split sizes, labels, truncation."""
    sizes = info.get("sizes") or {}
    split = " / ".join(f"{k} {v}" for k, v in sizes.items()) if isinstance(sizes, Mapping) else ""
    parts = [f"data: {info.get('dataset', '?')}"]
    if split:
        parts.append(split + " docs")
    if "num_labels" in info:
        parts.append(f"{info['num_labels']} labels")
    trunc = info.get("truncation_rate")
    if isinstance(trunc, Mapping):
        trunc = trunc.get("train")
    if isinstance(trunc, (int, float)):
        parts.append(f"{100 * float(trunc):.0f}% of train truncated at {info.get('max_length')}")
    return " | ".join(parts)
