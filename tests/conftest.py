"""Shared test configuration.

* No network: Hugging Face and W&B are forced offline before anything imports them.
* Strict dtype promotion for JAX by default, so silent up/down-casts (e.g. float32 -> float64 or
  int32 + float32) fail loudly in the numerics tests. Tests that drive third-party code which relies
  on standard promotion (Flax modules, the training loop) opt out with
  ``@pytest.mark.standard_promotion``.
* One persistent XLA compilation cache for the whole session (a fresh temporary folder, shared
  with the subprocesses the tests start): the smoke runs of many tests compile identical
  programs, and a cache hit reuses the executable instead of compiling it again. An executable
  is reused only for an identical program, so no result changes; the in-process jit cache that
  `test_train_step_does_not_recompile` counts is a different cache.
* XLA's CPU backend at optimization level 0 (``XLA_FLAGS=--xla_backend_optimization_level=0``,
  unless XLA_FLAGS is already set): the suite's programs are tiny, so compiling them is most of
  its time, and level 0 skips LLVM's expensive passes (one compile-bound test: 51.8 s -> 33.4 s
  of CPU). It moves float32 results in their last bits, so every in-process comparison is
  between programs compiled alike, and the stored goldens are trained in a subprocess at XLA's
  default settings (tests/test_train_loop.py).
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="altgrad-jax-xla-cache-")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], True)

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _jax_dtype_promotion(request):
    mode = "standard" if request.node.get_closest_marker("standard_promotion") else "strict"
    with jax.numpy_dtype_promotion(mode):
        yield


@pytest.fixture(scope="session")
def data_dir():
    """The real EURLEX57K directory from ALTGRAD_DATA_DIR, or skip the test."""
    path = os.environ.get("ALTGRAD_DATA_DIR", "")
    if not path or not os.path.isdir(path):
        pytest.skip("ALTGRAD_DATA_DIR is not set to the EURLEX57K directory")
    return path
