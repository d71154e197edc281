"""Seeded random subsets of a split (never "the first N lines": the files are in date order)."""

from __future__ import annotations

import numpy as np

__all__ = ["carve_indices", "subset_indices"]

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


def carve_indices(num_docs: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Splits ``range(num_docs)`` into (kept, carved) at random: the carved part is a validation split.

    ``round(fraction * num_docs)`` documents (at least 1) are carved; the draw is a function of
    ``seed`` only and independent of `subset_indices`' streams.

    Args:
        num_docs: documents in the train split (at least 2).
        fraction: carved share, ``0 < fraction < 1``.
        seed: the split's seed (``data.seed``).

    Returns:
        ``(kept, carved)`` sorted ``int64`` indices, disjoint, covering ``range(num_docs)``.

    Raises:
        ValueError: ``fraction`` outside (0, 1) or fewer than 2 documents.

    Example:
        >>> kept, carved = carve_indices(10, 0.2, seed=0)
        >>> len(kept), len(carved), sorted(set(kept) | set(carved)) == list(range(10))
        (8, 2, True)
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"data.validation_fraction must be in (0, 1), got {fraction}.")
    if num_docs < 2:
        raise ValueError(f"Cannot carve a validation split from {num_docs} train document(s); "
                         "provide a validation file or more train documents.")
    n_val = min(num_docs - 1, max(1, round(fraction * num_docs)))
    perm = np.random.default_rng([seed, 0xCA4E, 0]).permutation(num_docs)
    return np.sort(perm[n_val:]).astype(np.int64), np.sort(perm[:n_val]).astype(np.int64)
