"""Metric writers (JSON lines, console, Weights & Biases) and a progress bar.

Every writer implements the :class:`MetricWriter` protocol: ``write(step, metrics)`` with a flat
dict of scalars (namespaced keys such as ``train/loss``), ``write_config(config)`` and ``close()``.
:func:`make_writers` builds the standard set for a run folder::

    <workdir>/metrics.jsonl     one JSON object per write: {"step": 100, "train/loss": 0.42, ...}
    <workdir>/config.json       the run's configuration
    <workdir>/wandb_run_id      the W&B run id, reused when the run resumes (if W&B is enabled)
    <workdir>/wandb/            W&B's own files (offline runs can be uploaded with `wandb sync`)

JSON conventions (:class:`JsonlWriter`): Python / NumPy / JAX scalars become JSON numbers (integers
stay integers, bools stay bools); **non-finite floats become the strings** ``"nan"``, ``"inf"`` and
``"-inf"`` (strict JSON has no NaN; a string keeps which one it was and ``float(s)`` parses it back;
:func:`read_jsonl` does so).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import secrets
import string
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
from absl import logging

__all__ = [
    "MetricWriter",
    "JsonlWriter",
    "ConsoleWriter",
    "WandbWriter",
    "MultiWriter",
    "make_writers",
    "read_jsonl",
    "ProgressBar",
]

_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


@runtime_checkable
class MetricWriter(Protocol):
    """What the training loop writes metrics to."""

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Records the scalars ``metrics`` at training step ``step``."""

    def write_config(self, config: Any) -> None:
        """Records the run configuration (a dict, ``ConfigDict`` or dataclass)."""

    def close(self) -> None:
        """Flushes and releases resources; the writer is unusable afterwards."""


# ---------------------------------------------------------------------------------- helpers
def _scalar(value: Any) -> Any:
    """A JSON-safe Python scalar (or nested list) for a Python/NumPy/JAX value."""
    if isinstance(value, (str, bool)) or value is None:
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, np.bool_):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else _nonfinite_str(value)
    try:
        arr = np.asarray(value)
    except Exception as e:  # noqa: BLE001
        raise TypeError(f"cannot serialise metric value of type {type(value)}") from e
    if arr.dtype == object:
        raise TypeError(f"cannot serialise metric value of type {type(value)}")
    if arr.ndim == 0:
        return _scalar(arr.item())
    return [_scalar(v) for v in arr.tolist()]


def _nonfinite_str(x: float) -> str:
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def _config_to_dict(config: Any) -> dict:
    if config is None:
        return {}
    if hasattr(config, "to_dict"):  # ml_collections.ConfigDict
        return config.to_dict()
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    if isinstance(config, Mapping):
        return dict(config)
    raise TypeError(f"config must be a mapping, ConfigDict or dataclass, got {type(config)}.")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (type, np.dtype)):
        try:
            return np.dtype(obj).name  # jnp.bfloat16 -> "bfloat16"
        except TypeError:
            return getattr(obj, "__name__", str(obj))
    try:
        return _scalar(obj)
    except TypeError:
        return str(obj)  # e.g. a tuple of dtypes in a config: keep something readable


def _plain_float(value: Any) -> float | Any:
    try:
        return float(np.asarray(value))
    except (TypeError, ValueError):
        return value


# ---------------------------------------------------------------------------------- JSON lines
def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Reads a metrics file written by :class:`JsonlWriter`; "nan"/"inf"/"-inf" back to floats.

    Unparsable lines (e.g. a last line cut by a crash) are skipped.

    Example:
      >>> import tempfile, os
      >>> path = os.path.join(tempfile.mkdtemp(), "metrics.jsonl")
      >>> w = JsonlWriter(path); w.write(1, {"train/loss": float("nan")}); w.close()
      >>> read_jsonl(path)
      [{'step': 1, 'train/loss': nan}]
    """
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows.append(
                {k: _NONFINITE.get(v, v) if isinstance(v, str) else v for k, v in row.items()}
            )
    return rows


class JsonlWriter:
    """Appends one JSON object per :meth:`write` to ``path``, safe across crashes and resumes.

    Each line is ``{"step": <int>, <metric>: <value>, ...}`` and is flushed at once, so a killed
    process loses at most the line being written. On construction, an existing file is repaired:

    * a last line that does not parse (cut by a crash) is dropped, with a warning;
    * with ``resume_step=s``, only lines with ``step <= s`` are kept (the run restarts after step
      ``s``, so later lines would be written again): no step ever appears twice;
    * with ``resume_step=None`` (a fresh run), a non-empty file is renamed to
      ``<path>.<timestamp>.bak`` with a warning, never overwritten.

    The rewrite goes through a temporary file and ``os.replace``, so it is atomic.

    Args:
      path: the metrics file (parent directories are created).
      resume_step: the step the run resumes from (the restored checkpoint's step), or None.

    Example:
      >>> import tempfile, os
      >>> path = os.path.join(tempfile.mkdtemp(), "metrics.jsonl")
      >>> w = JsonlWriter(path)
      >>> for step in (1, 2, 3):
      ...     w.write(step, {"train/loss": 1.0 / step})
      >>> w.close()
      >>> w = JsonlWriter(path, resume_step=2)  # crashed after step 3, resumed from checkpoint 2
      >>> w.write(3, {"train/loss": 0.3}); w.close()
      >>> [row["step"] for row in read_jsonl(path)]
      [1, 2, 3]
    """

    def __init__(self, path: str | os.PathLike, resume_step: int | None = None):
        self.path = os.fspath(path)
        self.config_path = os.path.join(os.path.dirname(os.path.abspath(self.path)), "config.json")
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        if os.path.exists(self.path):
            self._repair(resume_step)
        self._file = open(self.path, "a", encoding="utf-8")

    def _repair(self, resume_step: int | None) -> None:
        with open(self.path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
        if resume_step is None:
            if any(line.strip() for line in lines):
                backup = f"{self.path}.{time.strftime('%Y%m%d-%H%M%S')}.bak"
                os.replace(self.path, backup)
                logging.warning(
                    "JsonlWriter: %s exists but the run starts from scratch; moved it to %s.",
                    self.path,
                    backup,
                )
            return
        kept, dropped_later, bad = [], 0, []
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                step = int(row["step"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                bad.append(i + 1)
                continue
            if step <= resume_step:
                kept.append(line)
            else:
                dropped_later += 1
        if bad:
            where = "its last line" if bad == [len(lines)] else f"line(s) {bad}"
            logging.warning(
                "JsonlWriter: dropped unparsable %s of %s (cut by a crash?).", where, self.path
            )
        if dropped_later:
            logging.info(
                "JsonlWriter: resuming at step %d; dropped %d line(s) with a later step from %s.",
                resume_step,
                dropped_later,
                self.path,
            )
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in kept)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Appends ``{"step": step, **metrics}`` as one line (non-finite floats as strings)."""
        if "step" in metrics:
            raise ValueError("metrics must not contain the key 'step'; it is written explicitly.")
        row = {"step": int(step)}
        row.update({str(k): _scalar(v) for k, v in metrics.items()})
        self._file.write(json.dumps(row, allow_nan=False) + "\n")
        self._file.flush()

    def write_config(self, config: Any) -> None:
        """Writes ``config.json`` next to the metrics file (atomically)."""
        tmp = self.config_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(_config_to_dict(config), f, indent=2, sort_keys=True, default=_json_default)
        os.replace(tmp, self.config_path)

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()


# ---------------------------------------------------------------------------------- console
DEFAULT_CONSOLE_KEYS = (
    "train/loss",
    "eval/loss",
    "eval/micro_f1",
    "eval/macro_f1",
    "optim/learning_rate",
    "perf/steps_per_s",
)


class ConsoleWriter:
    """Logs one compact line per write through ``absl.logging``.

    Args:
      keys: the metrics shown, in this order, when present; if none of them is present, the first
        ``max_items`` metrics (sorted by name) are shown instead.
      max_items: the cap for that fallback.

    Example:
      >>> ConsoleWriter().write(100, {"train/loss": 0.4213, "perf/steps_per_s": 3.2, "x": 1})
    """

    def __init__(self, keys: Sequence[str] = DEFAULT_CONSOLE_KEYS, max_items: int = 6):
        self.keys = tuple(keys)
        self.max_items = max_items

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        shown = [k for k in self.keys if k in metrics]
        if not shown:
            shown = sorted(metrics)[: self.max_items]
        parts = [f"step {int(step)}"]
        for k in shown:
            v = _plain_float(metrics[k])
            parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
        logging.info(" | ".join(parts))

    def write_config(self, config: Any) -> None:
        logging.info(
            "config: %s", json.dumps(_config_to_dict(config), sort_keys=True, default=_json_default)
        )

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------------- W&B
_WANDB_MODES = ("offline", "online", "disabled")


class WandbWriter:
    """Logs to Weights & Biases with ``run.log(metrics, step=step)``.

    Args:
      project: the W&B project.
      name: the run's display name.
      mode: ``"offline"`` (files under ``dir``, upload later with ``wandb sync``), ``"online"`` or
        ``"disabled"`` (a no-op run; nothing is written).
      dir: the directory W&B writes into (its ``wandb/`` folder is created there).
      config: the run configuration (dict, ``ConfigDict`` or dataclass).
      resume_id: a W&B run id; the run is resumed (``resume="allow"``) if it exists.

    Raises:
      ValueError: for an unknown ``mode``.

    Example:
      >>> w = WandbWriter("altgrad", "demo", mode="disabled")
      >>> w.write(1, {"train/loss": 0.5}); w.close()
    """

    def __init__(
        self,
        project: str,
        name: str | None = None,
        mode: str = "offline",
        dir: str | os.PathLike | None = None,  # noqa: A002 - wandb's own name
        config: Any = None,
        resume_id: str | None = None,
    ):
        if mode not in _WANDB_MODES:
            raise ValueError(f"wandb mode must be one of {_WANDB_MODES}, got {mode!r}.")
        import wandb  # imported lazily: it is slow to import and optional at run time

        if dir is not None:
            os.makedirs(dir, exist_ok=True)
        self._run = wandb.init(
            project=project,
            name=name,
            mode=mode,
            dir=None if dir is None else os.fspath(dir),
            config=_config_to_dict(config),
            id=resume_id,
            resume="allow" if resume_id else None,
            reinit="create_new",
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
        )
        self.mode = mode

    @property
    def run(self):
        """The underlying ``wandb`` run."""
        return self._run

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        self._run.log({str(k): _plain_float(v) for k, v in metrics.items()}, step=int(step))

    def write_config(self, config: Any) -> None:
        self._run.config.update(_config_to_dict(config), allow_val_change=True)

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None


# ---------------------------------------------------------------------------------- composition
class MultiWriter:
    """Forwards every call to each of ``writers``; :meth:`close` closes all, even if one fails."""

    def __init__(self, writers: Sequence[MetricWriter]):
        self.writers = list(writers)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        for w in self.writers:
            w.write(step, metrics)

    def write_config(self, config: Any) -> None:
        for w in self.writers:
            w.write_config(config)

    def close(self) -> None:
        errors = []
        for w in self.writers:
            try:
                w.close()
            except Exception as e:  # noqa: BLE001 - close the others, re-raise the first
                errors.append(e)
        if errors:
            raise errors[0]

    def __enter__(self) -> MultiWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_writers(
    workdir: str | os.PathLike,
    *,
    wandb_mode: str = "disabled",
    wandb_project: str = "altgrad",
    run_name: str | None = None,
    config: Any = None,
    resume_step: int | None = None,
    console: bool = False,
) -> MultiWriter:
    """The standard writers of a run: ``metrics.jsonl`` + console (+ W&B unless disabled).

    The W&B run id is stored in ``<workdir>/wandb_run_id`` and reused when ``resume_step`` is not
    None, so a resumed run continues the same W&B run. ``config`` (if given) is written to
    ``<workdir>/config.json`` and to W&B.

    Args:
      workdir: the run folder.
      wandb_mode: ``"disabled"`` (no W&B at all), ``"offline"`` or ``"online"``.
      wandb_project: the W&B project.
      run_name: the W&B display name; defaults to the run folder's name.
      config: the run configuration (dict, ``ConfigDict`` or dataclass), or None.
      resume_step: the step restored from a checkpoint, or None for a fresh run (see
        :class:`JsonlWriter`).
      console: also log every write through absl (:class:`ConsoleWriter`); the training loop
        prints its own compact lines instead (`altgrad_jax.io.Console`).

    Returns:
      A :class:`MultiWriter`.

    Example:
      >>> import tempfile
      >>> writers = make_writers(tempfile.mkdtemp(), config={"lr": 1e-3})
      >>> writers.write(1, {"train/loss": 0.7}); writers.close()
    """
    if wandb_mode not in _WANDB_MODES:
        raise ValueError(f"wandb_mode must be one of {_WANDB_MODES}, got {wandb_mode!r}.")
    workdir = os.fspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    writers: list[MetricWriter] = [
        JsonlWriter(os.path.join(workdir, "metrics.jsonl"), resume_step=resume_step),
    ]
    if console:
        writers.append(ConsoleWriter())
    if wandb_mode != "disabled":
        writers.append(
            WandbWriter(
                wandb_project,
                run_name or os.path.basename(os.path.abspath(workdir)),
                mode=wandb_mode,
                dir=workdir,
                config=config,
                resume_id=_wandb_run_id(workdir, resume=resume_step is not None),
            )
        )
    multi = MultiWriter(writers)
    if config is not None:
        multi.write_config(config)
    return multi


def _wandb_run_id(workdir: str, *, resume: bool) -> str:
    path = os.path.join(workdir, "wandb_run_id")
    if resume and os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            run_id = f.read().strip()
        if run_id:
            return run_id
    alphabet = string.ascii_lowercase + string.digits  # W&B's own id alphabet and length
    run_id = "".join(secrets.choice(alphabet) for _ in range(8))
    with open(path, "w", encoding="utf-8") as f:
        f.write(run_id + "\n")
    return run_id


# ---------------------------------------------------------------------------------- progress
class ProgressBar:
    """A thin ``tqdm`` bar for the training loop, silent when stdout is not a TTY.

    Args:
      total: the number of steps of the run.
      initial: the step the run starts (or resumes) from.
      disable: force the bar off (True) or on (False); None: on iff ``sys.stdout.isatty()``.
      desc: an optional label.

    Example:
      >>> with ProgressBar(total=100, initial=10) as bar:  # silent under doctest (not a TTY)
      ...     bar.update(5, loss=0.42, steps_per_s=12.5)
    """

    def __init__(
        self, total: int, initial: int = 0, *, disable: bool | None = None, desc: str | None = None
    ):
        if disable is None:
            disable = not _stdout_is_tty()
        self.enabled = not disable
        self._bar = None
        if self.enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total, initial=initial, desc=desc, file=sys.stdout, dynamic_ncols=True
            )

    def update(self, n: int = 1, *, loss: float | None = None, steps_per_s: float | None = None):
        """Advances by ``n`` steps and shows ``loss`` / ``steps_per_s`` if given."""
        if self._bar is None:
            return
        postfix = {}
        if loss is not None:
            postfix["loss"] = f"{_plain_float(loss):.4g}"
        if steps_per_s is not None:
            postfix["steps/s"] = f"{_plain_float(steps_per_s):.3g}"
        if postfix:
            self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _stdout_is_tty() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False
