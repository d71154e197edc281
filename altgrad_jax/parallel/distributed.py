"""Multi-host start-up from environment variables, and which process writes.

Environment (all three, or none):

  ``ALTGRAD_COORDINATOR``    ``host:port`` of process 0's coordinator (e.g. ``10.0.0.1:1234``)
  ``ALTGRAD_NUM_PROCESSES``  total number of processes
  ``ALTGRAD_PROCESS_ID``     this process's id, ``0 .. N-1``

JAX's own names (``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``) are
accepted as fallbacks. ``ALTGRAD_LOCAL_DEVICE_IDS`` (comma-separated, optional) restricts the local
devices. With none set, `initialize_from_env` is a no-op (one process), and on a managed cluster
(SLURM, TPU pods, ...) ``ALTGRAD_DISTRIBUTED=auto`` lets JAX detect everything itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax
import numpy as np

ENV_COORDINATOR = ("ALTGRAD_COORDINATOR", "JAX_COORDINATOR_ADDRESS")
ENV_NUM_PROCESSES = ("ALTGRAD_NUM_PROCESSES", "JAX_NUM_PROCESSES")
ENV_PROCESS_ID = ("ALTGRAD_PROCESS_ID", "JAX_PROCESS_ID")

_initialized = False


def _first(env: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    for name in names:
        if env.get(name, "") != "":
            return env[name]
    return None


def _int(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError as e:
        raise ValueError(f"{name}={value!r} is not an integer") from e


def distributed_args(env: Mapping[str, str] | None = None) -> dict | None:
    """The keyword arguments of `jax.distributed.initialize` from ``env``; None = single process.

    Raises:
      ValueError: only some of the three variables are set, or they are not valid.
    """
    env = os.environ if env is None else env
    if env.get("ALTGRAD_DISTRIBUTED", "") == "auto":
        return {}
    values = [_first(env, names) for names in (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID)]
    if all(v is None for v in values):
        return None
    if any(v is None for v in values):
        got = dict(zip(("coordinator", "num_processes", "process_id"), values))
        raise ValueError("multi-host needs all of ALTGRAD_COORDINATOR, ALTGRAD_NUM_PROCESSES and "
                         f"ALTGRAD_PROCESS_ID set; got {got}")
    address, num, pid = values
    num, pid = _int(num, "ALTGRAD_NUM_PROCESSES"), _int(pid, "ALTGRAD_PROCESS_ID")
    if ":" not in address:
        raise ValueError(f"ALTGRAD_COORDINATOR={address!r} must be host:port")
    if num < 1 or not 0 <= pid < num:
        raise ValueError(f"ALTGRAD_PROCESS_ID={pid} must be in 0..{num - 1} "
                         f"(ALTGRAD_NUM_PROCESSES={num})")
    args = {"coordinator_address": address, "num_processes": num, "process_id": pid}
    local = env.get("ALTGRAD_LOCAL_DEVICE_IDS", "")
    if local:
        args["local_device_ids"] = [_int(v, "ALTGRAD_LOCAL_DEVICE_IDS") for v in local.split(",")]
    return args


def initialize_from_env(env: Mapping[str, str] | None = None) -> bool:
    """Calls `jax.distributed.initialize` from the environment (see module docstring), once.

    Must run before anything touches a JAX device. A no-op when the variables are unset.

    Returns:
      True if this process joined a multi-process job (now or earlier), False if single-process.
    """
    global _initialized
    if _initialized:
        return True
    args = distributed_args(env)
    if args is None:
        return False
    jax.distributed.initialize(**args)
    _initialized = True
    return True


def is_main_process() -> bool:
    """True on process 0 (the one that writes logs, W&B, checkpoints' metadata and reports)."""
    return jax.process_index() == 0


def process_slice(global_batch_size: int) -> slice:
    """The rows of a global batch that this process feeds (contiguous, ``B / process_count``).

    Every process builds the same global batch order (same data seed); each passes its slice to
    `shard_batch`. Raises ValueError if the batch does not divide by the process count.
    """
    n, i = jax.process_count(), jax.process_index()
    if global_batch_size % n:
        raise ValueError(f"train.batch_size={global_batch_size} does not split over {n} "
                         f"processes; choose a multiple of {n}")
    rows = global_batch_size // n
    return slice(i * rows, (i + 1) * rows)


def process_local(batch, global_batch_size: int | None = None):
    """This process's rows (`process_slice`) of every leaf of a global host batch."""
    leaves = jax.tree.leaves(batch)
    size = global_batch_size or (np.shape(leaves[0])[0] if leaves else 0)
    rows = process_slice(size)
    return jax.tree.map(lambda x: np.asarray(x)[rows], batch)
