"""Where a run ran: the software versions and the hardware, for its results and its record.

`environment()` is written into ``results.json`` (``"environment"``) by the process that ends
the run; a run resumed on another machine records the last one (its perf figures carry across
processes, its environment does not). The study report counts the machines its records name.

Example:
  >>> from altgrad_jax.io.provenance import environment
  >>> env = environment()
  >>> sorted(env) == sorted(ENVIRONMENT_KEYS)
  True
"""

from __future__ import annotations

import importlib.metadata
import os
import platform

import jax

PACKAGES = ("jax", "jaxlib", "flax", "optax", "ml_dtypes", "numpy")
ENVIRONMENT_KEYS = ("versions", "python", "backend", "device_kind", "device_count",
                    "process_count", "cpu", "cpu_count")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else `platform.processor`, else the
    machine type."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment() -> dict:
    """``{"versions": {package: version}, "python", "backend", "device_kind", "device_count",
    "process_count", "cpu", "cpu_count"}`` of this process (JSON-compatible)."""
    return {"versions": {p: _version(p) for p in PACKAGES},
            "python": platform.python_version(), "backend": jax.default_backend(),
            "device_kind": jax.devices()[0].device_kind, "device_count": jax.device_count(),
            "process_count": jax.process_count(), "cpu": cpu_model(),
            "cpu_count": os.cpu_count()}
