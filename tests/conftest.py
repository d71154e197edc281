"""Shared test configuration.

* No network: Hugging Face and W&B are forced offline before anything imports them.
* Strict dtype promotion for JAX by default, so silent up/down-casts (e.g. float32 -> float64 or
  int32 + float32) fail loudly in the numerics tests. Tests that drive third-party code which relies
  on standard promotion (Flax modules, the training loop) opt out with
  ``@pytest.mark.standard_promotion``.
"""

import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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
