"""Past one device: a data mesh, sharded batches and states, multi-host start-up, vmapped seeds."""

from altgrad_jax.parallel.distributed import (distributed_args, initialize_from_env,
                                              is_main_process, process_local, process_slice)
from altgrad_jax.parallel.mesh import DATA_AXIS, data_sharding, make_mesh, replicated
from altgrad_jax.parallel.seeds import (make_multi_seed_step, seed_list, stack_states,
                                        unstack_states, vmap_step)
from altgrad_jax.parallel.sharding import (abstract_state, jit_sharded_step, leaf_spec,
                                           place_state, shard_batch, state_shardings)

__all__ = [
    "DATA_AXIS", "make_mesh", "data_sharding", "replicated", "shard_batch", "place_state",
    "state_shardings", "abstract_state", "leaf_spec", "jit_sharded_step", "initialize_from_env",
    "distributed_args", "is_main_process", "process_slice", "process_local", "stack_states",
    "unstack_states", "vmap_step", "make_multi_seed_step", "seed_list",
]
