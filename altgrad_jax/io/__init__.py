"""Run I/O: Orbax checkpoints and metric writers (console, JSON lines, W&B)."""

from altgrad_jax.io.checkpoint import Checkpointer, to_json_compatible

__all__ = ["Checkpointer", "to_json_compatible"]
