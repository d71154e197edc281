"""`TrainState`: everything a step reads and writes, as one checkpointable pytree."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
    """The training state (a pytree; the model and optimizer live outside it, bound statically).

    Attributes:
      step: int32 scalar, optimizer steps taken.
      params: float32 master parameters.
      opt_state: the Optax state (including its diagnostics).
      rng: raw uint32 PRNG key data (dropout); raw so that it checkpoints as a plain array.
      nonfinite_streak: consecutive steps with a non-finite loss (reset by a finite one).
      nonfinite_total: steps with a non-finite loss so far.
      first_nonfinite_step: step of the first non-finite loss, -1 if none.
      diag: diagnostics state (e.g. the sliding stall window); an empty dict when off.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    nonfinite_streak: jax.Array
    nonfinite_total: jax.Array
    first_nonfinite_step: jax.Array
    diag: Any

    @classmethod
    def create(cls, *, params, opt_state, rng_key, diag=None) -> "TrainState":
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                   rng=jax.random.key_data(rng_key), nonfinite_streak=jnp.zeros((), jnp.int32),
                   nonfinite_total=jnp.zeros((), jnp.int32),
                   first_nonfinite_step=jnp.full((), -1, jnp.int32),
                   diag={} if diag is None else diag)
