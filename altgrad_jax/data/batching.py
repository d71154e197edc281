"""In-memory datasets, a resumable shuffling batch iterator and fixed-shape evaluation batches."""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Mapping

import numpy as np

__all__ = ["ArrayDataset", "BatchIterator", "eval_batches", "num_eval_batches"]


@dataclasses.dataclass(frozen=True)
class ArrayDataset:
    """A split held as NumPy arrays.

    Attributes:
        input_ids: ``int32 [N, L]`` token ids, ``[CLS]`` first, padded with 0 (mask = ids != 0).
        labels: ``float32 [N, C]`` multi-hot targets.
        name: split name (``train``, ``validation``, ``test``).
    """

    input_ids: np.ndarray
    labels: np.ndarray
    name: str = "dataset"

    def __post_init__(self):
        ids = np.asarray(self.input_ids)
        labels = np.asarray(self.labels)
        if ids.ndim != 2 or labels.ndim != 2:
            raise ValueError(f"{self.name}: input_ids and labels must be 2-D, got shapes "
                             f"{ids.shape} and {labels.shape}.")
        if ids.shape[0] != labels.shape[0]:
            raise ValueError(f"{self.name}: {ids.shape[0]} input rows but {labels.shape[0]} "
                             "label rows.")
        object.__setattr__(self, "input_ids", ids.astype(np.int32, copy=False))
        object.__setattr__(self, "labels", labels.astype(np.float32, copy=False))

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def max_length(self) -> int:
        """Sequence length ``L``."""
        return int(self.input_ids.shape[1])

    @property
    def num_labels(self) -> int:
        """Number of label columns ``C``."""
        return int(self.labels.shape[1])

    def take(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """The batch dict for the given row indices."""
        return {"input_ids": self.input_ids[indices], "labels": self.labels[indices]}


class BatchIterator:
    """Endless, deterministic, resumable iterator over shuffled training batches.

    Epoch ``e`` visits the examples in the order ``np.random.default_rng([seed, e]).permutation(N)``
    (or in file order when ``shuffle=False``), so the order depends only on ``(seed, epoch)``.
    `state` / `restore` let a resumed run continue with exactly the batches an uninterrupted run
    would have seen.

    Example:
        >>> ds = ArrayDataset(np.arange(10, dtype=np.int32)[:, None], np.zeros((10, 1)), "toy")
        >>> it = BatchIterator(ds, batch_size=4, seed=0)
        >>> first = next(it); state = it.state(); second = next(it)
        >>> it2 = BatchIterator(ds, batch_size=4, seed=0); it2.restore(state)
        >>> bool((next(it2)["input_ids"] == second["input_ids"]).all())
        True
    """

    def __init__(self, dataset: ArrayDataset, batch_size: int, seed: int, *,
                 shuffle: bool = True, drop_remainder: bool = True):
        """Creates the iterator at epoch 0, position 0.

        Args:
            dataset: the split to iterate.
            batch_size: examples per batch.
            seed: shuffling seed.
            shuffle: shuffle each epoch; otherwise file order.
            drop_remainder: drop the last incomplete batch of each epoch (fixed shapes, one
                compile). Otherwise the last batch of an epoch is smaller.

        Raises:
            ValueError: ``batch_size < 1``, or an empty dataset, or fewer examples than
                ``batch_size`` with ``drop_remainder``.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        n = len(dataset)
        if n == 0 or (drop_remainder and n < batch_size):
            raise ValueError(f"Split {dataset.name!r} has {n} examples, fewer than batch_size="
                             f"{batch_size}; use a smaller batch_size or more documents.")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.drop_remainder = bool(drop_remainder)
        self._epoch = 0
        self._position = 0
        self._order = self._epoch_order(0)

    @property
    def steps_per_epoch(self) -> int:
        """Batches per epoch."""
        n = len(self.dataset)
        return n // self.batch_size if self.drop_remainder else -(-n // self.batch_size)

    @property
    def epoch(self) -> int:
        """Current epoch (0-based)."""
        return self._epoch

    def _epoch_order(self, epoch: int) -> np.ndarray:
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, epoch]).permutation(n)

    def state(self) -> dict[str, int]:
        """Where the iterator is: ``{"epoch": e, "position": p}`` (p = examples consumed in e)."""
        return {"epoch": int(self._epoch), "position": int(self._position)}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continues from a `state` of an iterator with the same dataset, seed and batch size.

        Raises:
            ValueError: missing keys or a position outside the epoch.
        """
        try:
            epoch, position = int(state["epoch"]), int(state["position"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"Iterator state must be {{'epoch': int, 'position': int}}, got "
                             f"{state!r}.") from e
        if epoch < 0 or not 0 <= position <= len(self.dataset):
            raise ValueError(f"Iterator state {state!r} is outside the dataset "
                             f"({len(self.dataset)} examples).")
        self._epoch, self._position = epoch, position
        self._order = self._epoch_order(epoch)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        n = len(self.dataset)
        remaining = n - self._position
        if remaining <= 0 or (self.drop_remainder and remaining < self.batch_size):
            self._epoch += 1
            self._position = 0
            self._order = self._epoch_order(self._epoch)
        idx = self._order[self._position:self._position + self.batch_size]
        self._position += len(idx)
        return self.dataset.take(idx)


def num_eval_batches(dataset: ArrayDataset, batch_size: int) -> int:
    """Number of batches `eval_batches` yields."""
    return -(-len(dataset) // batch_size)


def eval_batches(dataset: ArrayDataset, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Fixed-shape evaluation batches over the whole split, in order.

    The last batch is padded to ``batch_size`` so the eval step compiles once. Padding rows repeat
    the batch's first real example (not all-``[PAD]`` rows, which would give a zero mask and NaN in
    masked-mean pooling) and get weight 0.

    Args:
        dataset: the split.
        batch_size: rows per batch.

    Yields:
        ``{"input_ids": int32 [B, L], "labels": float32 [B, C], "weights": float32 [B]}`` with
        weights 1.0 for real rows and 0.0 for padding.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    n = len(dataset)
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        real = len(idx)
        if real < batch_size:
            idx = np.concatenate([idx, np.full(batch_size - real, start)])
        batch = dataset.take(idx)
        weights = np.zeros((batch_size,), dtype=np.float32)
        weights[:real] = 1.0
        batch["weights"] = weights
        yield batch
