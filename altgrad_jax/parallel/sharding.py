"""Placing the batch and the train state on a mesh (data parallel; FSDP-style by config).

* The global batch is split along its leading axis over ``data``: with ``n`` devices each holds
  ``B / n`` rows (`shard_batch`). On several processes each process passes only its own rows
  (``B / process_count``, see `altgrad_jax.parallel.process_slice`) and the global array is
  assembled with `jax.make_array_from_process_local_data`; one process gives the same result.
* The train state is replicated (`place_state`), or with ``fsdp=True`` every params / optimizer
  state leaf whose leading dimension divides by ``n`` (and which has at least ``fsdp_min_size``
  elements) is split along that dimension; XLA's SPMD partitioner inserts the all-gathers and
  reduce-scatters. Scalars, the step counter and the RNG stay replicated.
* `jit_sharded_step` jits a pure ``step(state, batch)`` with these shardings in and out, the state
  donated, so the loop's pure `train_step` runs unchanged on 1 or ``n`` devices.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from altgrad_jax.parallel.mesh import DATA_AXIS, data_sharding, replicated


def _check_rows(rows: int, parts: int, what: str) -> None:
    if rows % parts:
        raise ValueError(f"{what} of {rows} rows does not split over {parts} parts; "
                         f"choose a batch size divisible by {parts}")


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Each leaf of ``batch`` as a global `jax.Array` split over ``data`` on its leading axis.

    Args:
      batch: a pytree of host arrays of this process's rows (on one process: the global batch).
      mesh: from `make_mesh`.

    Returns:
      The same pytree of `jax.Array` s with ``NamedSharding(mesh, P("data"))``; the global leading
      dimension is ``local_rows * process_count``.

    Raises:
      ValueError: the global batch does not divide by the mesh size.
    """
    sharding = data_sharding(mesh)
    n = mesh.devices.size

    def put(x):
        x = np.asarray(x)
        _check_rows(x.shape[0] * jax.process_count(), n, "the global batch")
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree.map(put, batch)


def leaf_spec(x: Any, n: int, *, fsdp: bool, fsdp_min_size: int = 1024) -> PartitionSpec:
    """``P("data", None, ...)`` for an FSDP-shardable leaf (leading dim divisible by n), else P()."""
    shape = np.shape(x)
    if fsdp and n > 1 and len(shape) >= 1 and shape[0] % n == 0 and np.prod(shape) >= fsdp_min_size:
        return PartitionSpec(DATA_AXIS, *([None] * (len(shape) - 1)))
    return PartitionSpec()


def state_shardings(state: Any, mesh: Mesh, *, fsdp: bool = False,
                    fsdp_min_size: int = 1024) -> Any:
    """The sharding of every leaf of ``state`` (a `TrainState` or any pytree).

    With ``fsdp`` only ``state.params`` and ``state.opt_state`` are split (a pytree without those
    attributes is treated as all-shardable); everything else is replicated.
    """
    n = mesh.devices.size
    shard = lambda x: NamedSharding(mesh, leaf_spec(x, n, fsdp=fsdp,  # noqa: E731
                                                    fsdp_min_size=fsdp_min_size))
    if not (hasattr(state, "params") and hasattr(state, "opt_state")):
        return jax.tree.map(shard, state)
    rep = replicated(mesh)
    out = jax.tree.map(lambda _: rep, state)
    return out.replace(params=jax.tree.map(shard, state.params),
                       opt_state=jax.tree.map(shard, state.opt_state))


def place_state(state: Any, mesh: Mesh, *, fsdp: bool = False, fsdp_min_size: int = 1024) -> Any:
    """``state`` on ``mesh``: replicated, or FSDP-split (see `state_shardings`).

    Example:
      >>> import jax.numpy as jnp
      >>> from altgrad_jax.parallel import make_mesh
      >>> mesh = make_mesh(-1)
      >>> state = place_state({"w": jnp.ones((8, 4))}, mesh)
      >>> state["w"].sharding.is_fully_replicated
      True
    """
    return jax.device_put(state, state_shardings(state, mesh, fsdp=fsdp,
                                                 fsdp_min_size=fsdp_min_size))


def abstract_state(state: Any, mesh: Mesh, *, fsdp: bool = False,
                   fsdp_min_size: int = 1024) -> Any:
    """`jax.ShapeDtypeStruct` s of ``state`` with the shardings for ``mesh``: a restore target.

    Orbax restores a checkpoint saved on any device count into these shardings (it reads the
    global arrays and re-slices them), so a run saved on 8 devices resumes on 4 or 1.
    """
    shardings = state_shardings(state, mesh, fsdp=fsdp, fsdp_min_size=fsdp_min_size)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s),
                        state, shardings)


def jit_sharded_step(step: Callable, state: Any, mesh: Mesh, *, fsdp: bool = False,
                     fsdp_min_size: int = 1024, donate: bool = True) -> Callable:
    """``jax.jit(step)`` with the state sharding fixed in and out and the batch split over data.

    Args:
      step: a pure ``step(state, batch) -> (state, metrics)`` (static args bound by partial).
      state: an example state (fixes the shardings; its values are not used).
      mesh: from `make_mesh`.
      fsdp, fsdp_min_size: as in `place_state`.
      donate: donate the state buffers (``donate_argnums=0``).

    Returns:
      The jitted step; metrics come back replicated.
    """
    state_sh = state_shardings(state, mesh, fsdp=fsdp, fsdp_min_size=fsdp_min_size)
    return jax.jit(step, in_shardings=(state_sh, data_sharding(mesh)),
                   out_shardings=(state_sh, replicated(mesh)),
                   donate_argnums=(0,) if donate else ())
