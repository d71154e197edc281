"""Orbax checkpoints that never lose a run.

One :class:`Checkpointer` per run folder manages three independent Orbax ``CheckpointManager`` s::

    <directory>/checkpoints/<step>/   periodic, the ``max_to_keep`` newest steps
    <directory>/best/<step>/          the single best step by ``best_metric``
    <directory>/anomaly/<step>/       written once, at the first non-finite loss
    <directory>/corrupt/<kind>-<step>-<time>/   unreadable steps moved aside (never deleted)

Every step directory holds three items: ``state`` (the train-state pytree, via
``ocp.args.StandardSave``), ``extra`` (a JSON dict: data-iterator state, RNG seeds, best-so-far ...,
via ``ocp.args.JsonSave``) and ``meta`` (JSON: step, kind, metrics, best-metric value).

Safety rules:

* Saves are synchronous by default: :meth:`Checkpointer.save` returns only once Orbax has committed
  the step (atomic rename of a temporary directory, then ``commit_success.txt``). With
  ``async_save=True`` the write overlaps training, and the next save, restore or :meth:`close` waits
  for it; a process killed mid-write leaves only a temporary directory, which Orbax ignores and
  the next :class:`Checkpointer` on the folder deletes.
* :meth:`Checkpointer.restore_latest` walks the steps newest first. A step is skipped, with an
  ``absl`` warning naming the step and the reason, when its commit marker is missing (where the
  other steps have one) or when Orbax fails to read it (truncated or missing file, bad JSON). Steps
  that were skipped because a *newer* one failed while an *older* one restored are moved to
  ``<directory>/corrupt/`` so the resumed run can save those step numbers again. If every step
  fails (typically a target whose structure does not match the checkpoint), nothing is moved and a
  ``RuntimeError`` lists the reasons: a run is never silently restarted from scratch.

Restoring into a target: the restored tree has the structure of ``target_state`` and each leaf the
dtype, shape and sharding of the target's leaf (``jax.Array`` -> ``jax.Array`` with the same
sharding, ``np.ndarray`` -> ``np.ndarray``, NumPy scalar -> NumPy scalar of the same type, Python
scalar -> Python scalar, typed PRNG key arrays -> key arrays of the same implementation). Optax
``NamedTuple`` states and Flax ``struct.dataclass`` es come back as themselves.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import os
import shutil
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

__all__ = ["Checkpointer", "to_json_compatible"]

PyTree = Any
_COMMIT_MARKER = "commit_success.txt"  # written by Orbax when a step is finalized
_TMP_SUFFIX = ".orbax-checkpoint-tmp"  # Orbax's in-progress step directories
_ITEMS = ("state", "extra", "meta")
_LABELS = {"checkpoints": "periodic", "best": "best", "anomaly": "anomaly"}


def to_json_compatible(value: Any) -> Any:
    """Converts NumPy / JAX scalars and arrays inside ``value`` to plain Python for JSON.

    Args:
      value: nested dicts / lists / tuples of JSON types, NumPy or JAX scalars and arrays.

    Returns:
      The same nesting with arrays as (nested) lists and scalars as ``int`` / ``float`` / ``bool``;
      tuples become lists and mapping keys strings.

    Raises:
      TypeError: for values that have no JSON representation (naming the offending type).

    Example:
      >>> to_json_compatible({"seed": np.int64(3), "pos": np.arange(2)})
      {'seed': 3, 'pos': [0, 1]}
    """
    if isinstance(value, Mapping):
        return {str(k): to_json_compatible(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_compatible(v) for v in value]
    if isinstance(value, (np.ndarray, np.generic, jax.Array)):
        return np.asarray(value).tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"extra/metrics must be JSON-compatible; got a value of type {type(value)}.")


def _is_prng_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_savable(x: Any) -> Any:
    """Leaf transform before saving: NumPy scalars -> 0-d arrays, typed keys -> their key data."""
    if _is_prng_key(x):
        return jax.random.key_data(x)
    if isinstance(x, np.generic):
        return np.asarray(x)
    return x


def _to_abstract(x: Any) -> Any:
    """Leaf transform of the restore target into what ``StandardRestore`` understands."""
    if _is_prng_key(x):
        data = jax.eval_shape(jax.random.key_data, x)
        return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=x.sharding)
    if isinstance(x, jax.Array):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    if isinstance(x, np.generic):
        return np.asarray(x)
    return x  # np.ndarray, ShapeDtypeStruct, Python scalars: Orbax restores them as such


def _from_restored(target: Any, restored: Any) -> Any:
    """Leaf transform after restoring: undoes :func:`_to_savable` by the target's leaf type."""
    if _is_prng_key(target):
        return jax.random.wrap_key_data(restored, impl=jax.random.key_impl(target))
    if isinstance(target, np.generic):
        return np.asarray(restored, dtype=target.dtype)[()]
    return restored


@dataclasses.dataclass(frozen=True)
class _Restored:
    step: int
    state: PyTree
    extra: dict
    meta: dict


class Checkpointer:
    """Periodic, best and anomaly checkpoints of a training run, with corruption fallback.

    Args:
      directory: the run's checkpoint root (created if missing).
      max_to_keep: number of newest periodic checkpoints kept in ``<directory>/checkpoints``.
      keep_best: whether :meth:`save` also keeps ``<directory>/best`` up to date from ``metrics``.
      best_metric: the key of ``metrics`` that ranks checkpoints, e.g. ``"eval/micro_f1"``.
      best_mode: ``"max"`` or ``"min"``: which direction of ``best_metric`` is better.
      async_save: if True, a save returns before the bytes are on disk; the next save, restore or
        :meth:`close` waits for it. Default False: every save is committed when it returns.

    Example:
      >>> import tempfile, jax.numpy as jnp, optax
      >>> params = {"w": jnp.ones((2, 2))}
      >>> state = {"params": params, "opt": optax.adamw(1e-3).init(params)}
      >>> ckpt = Checkpointer(tempfile.mkdtemp(), max_to_keep=2)
      >>> ckpt.save(10, state, extra={"seed": 0}, metrics={"eval/micro_f1": 0.5})
      True
      >>> step, restored, extra = ckpt.restore_latest(state)
      >>> step, extra, ckpt.best_value
      (10, {'seed': 0}, 0.5)
      >>> ckpt.close()
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_to_keep: int = 3,
        keep_best: bool = True,
        best_metric: str = "eval/micro_f1",
        best_mode: str = "max",
        async_save: bool = False,
    ):
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}.")
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}.")
        self.directory = os.path.abspath(os.fspath(directory))
        self.max_to_keep = max_to_keep
        self.keep_best = keep_best
        self.best_metric = best_metric
        self.best_mode = best_mode
        self.async_save = async_save
        os.makedirs(self.directory, exist_ok=True)
        self._managers = {
            "checkpoints": self._make_manager("checkpoints", max_to_keep),
            "best": self._make_manager("best", 1),
            "anomaly": self._make_manager("anomaly", 1),
        }
        self._best_value: float | None = self._read_best_value()

    # ------------------------------------------------------------------ construction helpers
    def _make_manager(self, kind: str, max_to_keep: int) -> ocp.CheckpointManager:
        _remove_unfinished_saves(os.path.join(self.directory, kind))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=True,
            cleanup_tmp_directories=False,  # done synchronously in _remove_unfinished_saves
            enable_async_checkpointing=self.async_save,
        )
        return ocp.CheckpointManager(
            os.path.join(self.directory, kind), options=options, item_names=_ITEMS
        )

    def _read_best_value(self) -> float | None:
        mgr = self._managers["best"]
        for step in sorted(mgr.all_steps(), reverse=True):
            try:
                meta = mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
                value = meta.get("best_value")
                return None if value is None else float(value)
            except Exception as e:  # noqa: BLE001 - an unreadable best step is reported, skipped
                logging.warning("Checkpointer: cannot read best checkpoint step %d: %s", step, e)
        return None

    # ------------------------------------------------------------------ properties
    @property
    def best_value(self) -> float | None:
        """The best ``best_metric`` value saved so far (also after a restart), or None."""
        return self._best_value

    def latest_step(self) -> int | None:
        """The newest periodic step whose directory is committed, or None (content not read)."""
        mgr = self._managers["checkpoints"]
        mgr.reload()
        steps = sorted(mgr.all_steps(), reverse=True)
        expect_marker = self._expect_marker("checkpoints", steps)
        for step in steps:
            if self._structural_problem("checkpoints", step, expect_marker) is None:
                return step
        return None

    # ------------------------------------------------------------------ saving
    def _write(self, kind: str, step: int, state: PyTree, extra: Mapping, meta: dict) -> bool:
        mgr = self._managers[kind]
        if step in mgr.all_steps():
            logging.info("Checkpointer: %s step %d exists; replacing it.", kind, step)
            mgr.delete(step)
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(jax.tree.map(_to_savable, state)),
            extra=ocp.args.JsonSave(to_json_compatible(dict(extra or {}))),
            meta=ocp.args.JsonSave(to_json_compatible(meta)),
        )
        saved = mgr.save(step, args=args, force=True)
        if not self.async_save:
            mgr.wait_until_finished()
        return bool(saved)

    def save(
        self,
        step: int,
        state_pytree: PyTree,
        *,
        extra: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
        force: bool = False,
    ) -> bool:
        """Saves a periodic checkpoint (and the best one, if ``metrics`` improve ``best_metric``).

        Args:
          step: the training step (a non-negative int).
          state_pytree: the train state (JAX / NumPy arrays and scalars, Optax states, Flax
            structs).
          extra: JSON-compatible dict restored alongside the state (iterator state, RNG, ...).
          metrics: optional flat dict of scalars stored in the step's ``meta``; when ``keep_best``
            and it holds ``best_metric``, :meth:`save_best` is called with that value.
          force: replace an existing checkpoint of the same step, or write a step older than the
            newest one. Without it such a save is skipped (with a log line) and returns False.

        Returns:
          Whether a periodic checkpoint was written.
        """
        step = _check_step(step)
        mgr = self._managers["checkpoints"]
        latest = mgr.latest_step()
        if not force and latest is not None and step <= latest:
            logging.info(
                "Checkpointer: skipping save at step %d (newest checkpoint is step %d; "
                "pass force=True to overwrite).",
                step,
                latest,
            )
            written = False
        else:
            meta = {"step": step, "kind": "periodic", "metrics": dict(metrics or {})}
            written = self._write("checkpoints", step, state_pytree, extra or {}, meta)
        if self.keep_best and metrics is not None and self.best_metric in metrics:
            self.save_best(step, state_pytree, extra, metrics[self.best_metric])
        return written

    def _improves(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self._best_value is None:
            return True
        return value > self._best_value if self.best_mode == "max" else value < self._best_value

    def save_best(
        self,
        step: int,
        state: PyTree,
        extra: Mapping[str, Any] | None,
        metric_value: float,
    ) -> bool:
        """Saves ``state`` to ``<directory>/best`` iff ``metric_value`` strictly improves the best.

        Non-finite values never improve. The previous best is removed only after the new one is
        committed.

        Returns:
          Whether the best checkpoint was replaced.
        """
        step = _check_step(step)
        value = float(np.asarray(metric_value))
        if not self._improves(value):
            return False
        meta = {
            "step": step,
            "kind": "best",
            "best_metric": self.best_metric,
            "best_mode": self.best_mode,
            "best_value": value,
        }
        written = self._write("best", step, state, extra or {}, meta)
        if written:
            self._best_value = value
            logging.info(
                "Checkpointer: new best %s=%.6g at step %d.", self.best_metric, value, step
            )
        return written

    def save_anomaly(
        self, step: int, state: PyTree, extra: Mapping[str, Any] | None = None
    ) -> bool:
        """Saves the state at the first non-finite loss to ``<directory>/anomaly``, once per run.

        Returns:
          True if written now; False if an anomaly checkpoint already exists (also from an earlier
          process of the same run).
        """
        step = _check_step(step)
        mgr = self._managers["anomaly"]
        if mgr.all_steps():
            return False
        meta = {"step": step, "kind": "anomaly"}
        written = self._write("anomaly", step, state, extra or {}, meta)
        if written:
            logging.warning("Checkpointer: non-finite loss; anomaly checkpoint at step %d.", step)
        return written

    # ------------------------------------------------------------------ restoring
    def _expect_marker(self, kind: str, steps) -> bool:
        # Orbax writes commit_success.txt when it finalizes a step. Require it only if this
        # directory's checkpoints carry it at all (robust to Orbax versions that do not write it).
        return any(
            os.path.exists(os.path.join(self._step_dir(kind, s), _COMMIT_MARKER)) for s in steps
        )

    def _step_dir(self, kind: str, step: int) -> str:
        return str(self._managers[kind].directory / str(step))

    def _structural_problem(self, kind: str, step: int, expect_marker: bool) -> str | None:
        path = self._step_dir(kind, step)
        if not os.path.isdir(path):
            return f"directory {path} does not exist"
        if expect_marker and not os.path.exists(os.path.join(path, _COMMIT_MARKER)):
            return f"no commit marker ({_COMMIT_MARKER}): the save did not finish"
        for item in _ITEMS:
            if not os.path.isdir(os.path.join(path, item)):
                return f"item '{item}' is missing"
        return None

    def _restore_step(self, kind: str, step: int, target_state: PyTree) -> _Restored:
        abstract = jax.tree.map(_to_abstract, target_state)
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract),
            extra=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore(),
        )
        restored = self._managers[kind].restore(step, args=args)
        state = jax.tree.map(_from_restored, target_state, restored.state)
        return _Restored(step, state, dict(restored.extra or {}), dict(restored.meta or {}))

    def _restore_newest_good(self, kind: str, target_state: PyTree) -> _Restored | None:
        mgr = self._managers[kind]
        mgr.wait_until_finished()
        mgr.reload()
        steps = sorted(mgr.all_steps(), reverse=True)
        if not steps:
            return None
        expect_marker = self._expect_marker(kind, steps)
        failures: list[tuple[int, str]] = []
        for step in steps:
            reason = self._structural_problem(kind, step, expect_marker)
            if reason is None:
                try:
                    result = self._restore_step(kind, step, target_state)
                except Exception as e:  # noqa: BLE001 - any read error means: try an older step
                    reason = f"{type(e).__name__}: {_shorten(str(e))}"
            if reason is not None:
                logging.warning(
                    "Checkpointer: %s checkpoint at step %d in %s is unusable (%s); "
                    "falling back to the previous one.",
                    _LABELS[kind],
                    step,
                    os.path.join(self.directory, kind),
                    reason,
                )
                failures.append((step, reason))
                continue
            for bad_step, _ in failures:
                self._quarantine(kind, bad_step)
            if failures:
                mgr.reload()
                logging.warning(
                    "Checkpointer: restored %s step %d after skipping step(s) %s.",
                    _LABELS[kind],
                    step,
                    ", ".join(str(s) for s, _ in failures),
                )
            return result
        details = "; ".join(f"step {s}: {r}" for s, r in failures)
        raise RuntimeError(
            f"None of the {len(steps)} {kind} checkpoint(s) in "
            f"{os.path.join(self.directory, kind)} could be restored into the given target "
            f"(does its structure match?). Nothing was moved or deleted. {details}"
        )

    def _quarantine(self, kind: str, step: int) -> None:
        src = self._step_dir(kind, step)
        dst_root = os.path.join(self.directory, "corrupt")
        os.makedirs(dst_root, exist_ok=True)
        dst = os.path.join(dst_root, f"{kind}-{step}-{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.move(src, dst)
        logging.warning("Checkpointer: moved unusable %s step %d to %s.", _LABELS[kind], step, dst)

    def restore_latest(self, target_state: PyTree) -> tuple[int, PyTree, dict] | None:
        """Restores the newest readable periodic checkpoint into the structure of ``target_state``.

        Args:
          target_state: a pytree like the saved one (concrete arrays or ``jax.ShapeDtypeStruct``);
            it fixes the structure, dtypes and shardings of the result.

        Returns:
          ``(step, state, extra)``, or None if there is no checkpoint at all.

        Raises:
          RuntimeError: checkpoints exist but none could be restored (nothing is moved then).
        """
        result = self._restore_newest_good("checkpoints", target_state)
        return None if result is None else (result.step, result.state, result.extra)

    def restore_best(self, target_state: PyTree) -> tuple[int, PyTree, dict] | None:
        """Like :meth:`restore_latest`, for ``<directory>/best``."""
        result = self._restore_newest_good("best", target_state)
        return None if result is None else (result.step, result.state, result.extra)

    def restore_anomaly(self, target_state: PyTree) -> tuple[int, PyTree, dict] | None:
        """Like :meth:`restore_latest`, for ``<directory>/anomaly``."""
        result = self._restore_newest_good("anomaly", target_state)
        return None if result is None else (result.step, result.state, result.extra)

    # ------------------------------------------------------------------ lifecycle
    def wait_until_finished(self) -> None:
        """Blocks until every pending (asynchronous) save is committed."""
        for mgr in self._managers.values():
            mgr.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the Orbax managers."""
        for mgr in self._managers.values():
            mgr.wait_until_finished()
            mgr.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _remove_unfinished_saves(root: str) -> None:
    """Deletes Orbax temporary step directories left by a process killed mid-save.

    (Orbax's own ``cleanup_tmp_directories`` runs in a background future that ``close()`` does not
    await; doing it here keeps construction synchronous.)
    """
    if not os.path.isdir(root):
        return
    for name in sorted(os.listdir(root)):
        if _TMP_SUFFIX in name:
            logging.warning("Checkpointer: removing unfinished save %s.", os.path.join(root, name))
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def _check_step(step: Any) -> int:
    """Accepts Python / NumPy / 0-d JAX integers >= 0 (not bools)."""
    try:
        if isinstance(step, (bool, np.bool_)):
            raise TypeError
        value = operator.index(step)
    except TypeError as e:
        raise ValueError(f"step must be a non-negative int, got {step!r}.") from e
    if value < 0:
        raise ValueError(f"step must be a non-negative int, got {value}.")
    return value


def _shorten(text: str, limit: int = 300) -> str:
    text = " ".join(text.split("[tensorstore_spec")[0].split())  # drop TensorStore's JSON dump
    return text if len(text) <= limit else text[:limit] + " ..."
