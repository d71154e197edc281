"""Seeded random subsets of a split (never "the first N lines": the files are in date order)."""

from __future__ import annotations

import numpy as np

__all__ = ["subset_indices"]

_SPLIT_STREAMS = {"train": 1, "validation": 2, "test": 3}


def subset_indices(num_docs: int, max_docs: int, seed: int, split: str) -> np.ndarray:
    """Indices of a random subset of a split, in ascending (file) order.

    Args:
        num_docs: documents in the split.
        max_docs: subset size; 0 (or >= ``num_docs``) keeps every document.
        seed: the subset is a function of ``(seed, split)`` only.
        split: split name; each split draws from its own random stream.

    Returns:
        ``int64`` indices, sorted.

    Raises:
        ValueError: negative ``max_docs``.
    """
    if max_docs < 0:
        raise ValueError(f"max_docs must be >= 0 (0 = all), got {max_docs} for split {split!r}.")
    if max_docs == 0 or max_docs >= num_docs:
        return np.arange(num_docs, dtype=np.int64)
    stream = _SPLIT_STREAMS.get(split, sum(map(ord, split)))
    rng = np.random.default_rng([seed, 0x5B5E7, stream])
    return np.sort(rng.choice(num_docs, size=max_docs, replace=False)).astype(np.int64)
