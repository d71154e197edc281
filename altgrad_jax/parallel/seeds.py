"""Several seeds in one program: a stacked train state and the pure step under `jax.vmap`.

S runs of one configuration that differ only in their seeds (init, dropout, optimizer rounding)
are the same program on different data; stacking their states along a new leading axis and
vmapping the pure step trains all of them with one compile and one launch per step. On a GPU this
is how a small model fills the device.

Semantics: seed ``i`` of the vmapped run computes what a separate run with that seed computes.
The batched matmuls may sum in a different order than the unbatched ones, so results agree to
float32 rounding (measured in tests/test_parallel.py), not bit for bit. Inside the step, a
``lax.cond`` whose predicate depends on the (batched) state, e.g. the log-step diagnostics,
becomes a ``select`` under vmap: both branches run every step (correct, slower).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp


def stack_states(states: Sequence[Any]) -> Any:
    """One pytree whose leaves are the S states' leaves stacked on a new axis 0.

    Example:
      >>> s = stack_states([{"w": jnp.zeros(3)}, {"w": jnp.ones(3)}])
      >>> s["w"].shape
      (2, 3)
    """
    if not states:
        raise ValueError("stack_states needs at least one state")
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def unstack_states(stacked: Any) -> list:
    """The inverse of `stack_states`: a list of S states."""
    leaves, treedef = jax.tree.flatten(stacked)
    n = leaves[0].shape[0] if leaves else 0
    return [jax.tree.unflatten(treedef, [x[i] for x in leaves]) for i in range(n)]


def vmap_step(step: Callable, *, shared_batch: bool = True) -> Callable:
    """``step(state, batch)`` vmapped over the stacked state (and the batch unless shared).

    Args:
      step: a pure ``step(state, batch) -> (state, metrics)`` (static args bound by partial),
        not jitted.
      shared_batch: all seeds see the same batch (same data order: the seeds differ in init,
        dropout and rounding only); False = the batch has a leading seed axis too.

    Returns:
      ``multi_step(stacked_state, batch) -> (stacked_state, stacked_metrics)``; every metric gets a
      leading axis of size S. Jit it (``jax.jit(..., donate_argnums=0)``) once.
    """
    return jax.vmap(step, in_axes=(0, None if shared_batch else 0))


def make_multi_seed_step(step: Callable, *, shared_batch: bool = True,
                         donate: bool = True) -> Callable:
    """`vmap_step`, jitted once with the stacked state donated."""
    return jax.jit(vmap_step(step, shared_batch=shared_batch),
                   donate_argnums=(0,) if donate else ())


def seed_list(base_seed: int, num_seeds: int) -> list[int]:
    """The seeds of a multi-seed program: ``base, base + 1, ..., base + S - 1``."""
    if not isinstance(num_seeds, int) or num_seeds < 1:
        raise ValueError(f"mesh.vmap_seeds must be a positive int, got {num_seeds!r}")
    return [int(base_seed) + i for i in range(num_seeds)]
