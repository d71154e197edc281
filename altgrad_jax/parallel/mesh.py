"""The device mesh: one ``data`` axis over the devices (data parallel, optionally FSDP).

``make_mesh(config.mesh)`` builds a `jax.sharding.Mesh` whose single axis ``data`` spans
``mesh.data`` devices (``-1`` = every device of every process). The same code runs on one device
(a 1-device mesh): every sharding below is then trivially a single-device placement.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def _mesh_size(mesh_config: Any) -> int:
    value = mesh_config.get("data", -1) if hasattr(mesh_config, "get") else mesh_config
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"mesh.data must be an int (-1 = all devices), got {value!r}")
    return int(value)


def make_mesh(mesh_config: Any = None, *, devices=None) -> Mesh:
    """A `Mesh` with one axis ``data`` over ``mesh_config.data`` devices.

    Args:
      mesh_config: ``config.mesh`` (a ConfigDict / dict with ``data``), an int, or None (= -1).
        ``data=-1`` uses every device (``jax.devices()``, all processes); ``data=n`` the first
        ``n`` (single-process only: on several processes the mesh must span all devices).
      devices: the devices to choose from (default ``jax.devices()``).

    Returns:
      ``Mesh(devices[:n], ("data",))``.

    Example:
      >>> mesh = make_mesh({"data": -1})
      >>> mesh.axis_names
      ('data',)
    """
    devices = list(jax.devices() if devices is None else devices)
    n = _mesh_size(-1 if mesh_config is None else mesh_config)
    if n == -1:
        n = len(devices)
    if n < 1 or n > len(devices):
        raise ValueError(f"mesh.data={n} but {len(devices)} device(s) are available; "
                         f"set mesh.data to -1 (all) or a count in 1..{len(devices)}")
    if n != len(devices) and jax.process_count() > 1:
        raise ValueError(f"mesh.data={n} on {jax.process_count()} processes: a multi-process mesh "
                         f"must span all {len(devices)} devices; set mesh.data=-1")
    return Mesh(np.asarray(devices[:n]), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``data``, the other axes whole."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of ``mesh``."""
    return NamedSharding(mesh, PartitionSpec())
