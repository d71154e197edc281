"""Data package: ArrayDataset, resumable BatchIterator, padded eval batches."""

import itertools

import numpy as np
import pytest

from altgrad_jax.data import ArrayDataset, BatchIterator, eval_batches, num_eval_batches


def _ds(n=23, length=4, classes=3):
    ids = np.arange(n, dtype=np.int32)[:, None] + np.zeros((1, length), np.int32)
    labels = (np.arange(n)[:, None] % classes == np.arange(classes)).astype(np.float32)
    return ArrayDataset(ids, labels, "toy")


def _rows(batches):
    return [b["input_ids"][:, 0].tolist() for b in batches]


def test_batch_shapes_and_dtypes():
    it = BatchIterator(_ds(), batch_size=5, seed=0)
    b = next(it)
    assert b["input_ids"].shape == (5, 4) and b["input_ids"].dtype == np.int32
    assert b["labels"].shape == (5, 3) and b["labels"].dtype == np.float32
    assert it.steps_per_epoch == 4


def test_deterministic_epochs_cover_and_differ():
    ds = _ds()
    a = _rows(itertools.islice(BatchIterator(ds, 5, seed=1), 12))
    assert a == _rows(itertools.islice(BatchIterator(ds, 5, seed=1), 12))
    assert a != _rows(itertools.islice(BatchIterator(ds, 5, seed=2), 12))
    epochs = [sum(a[4 * e:4 * e + 4], []) for e in range(3)]
    for e, rows in enumerate(epochs):
        assert len(set(rows)) == 20  # drop_remainder: 3 of 23 dropped
        perm = np.random.default_rng([1, e]).permutation(23)[:20].tolist()
        assert rows == perm
    assert epochs[0] != epochs[1] != epochs[2]


@pytest.mark.parametrize("stop", [0, 1, 3, 4, 6, 9])
def test_restore_continues_identically(stop):
    ds = _ds()
    full = _rows(itertools.islice(BatchIterator(ds, 5, seed=3), 12))
    it = BatchIterator(ds, 5, seed=3)
    head = _rows(itertools.islice(it, stop))
    state = it.state()
    assert set(state) == {"epoch", "position"}
    resumed = BatchIterator(ds, 5, seed=3)
    resumed.restore(dict(state))
    assert head + _rows(itertools.islice(resumed, 12 - stop)) == full


def test_no_shuffle_keep_remainder():
    it = BatchIterator(_ds(n=7), batch_size=3, seed=0, shuffle=False, drop_remainder=False)
    assert _rows(itertools.islice(it, 4)) == [[0, 1, 2], [3, 4, 5], [6], [0, 1, 2]]
    assert it.state() == {"epoch": 1, "position": 3} and it.steps_per_epoch == 3


def test_invalid_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        BatchIterator(_ds(n=3), batch_size=4, seed=0)
    it = BatchIterator(_ds(), 5, seed=0)
    with pytest.raises(ValueError, match="epoch"):
        it.restore({"step": 3})
    with pytest.raises(ValueError, match="mismatch|rows"):
        ArrayDataset(np.zeros((3, 2)), np.zeros((4, 1)), "x")


def test_eval_batches_pad_with_weights():
    ds = _ds(n=11)
    batches = list(eval_batches(ds, 4))
    assert len(batches) == num_eval_batches(ds, 4) == 3
    for b in batches:
        assert b["input_ids"].shape == (4, 4) and b["labels"].shape == (4, 3)
        assert b["weights"].dtype == np.float32
    assert [b["weights"].tolist() for b in batches][-1] == [1, 1, 1, 0]
    real = np.concatenate([b["input_ids"][b["weights"] > 0, 0] for b in batches])
    np.testing.assert_array_equal(real, np.arange(11))
    # Padding rows are real documents (non-empty mask), so masked pooling stays finite.
    assert np.all(batches[-1]["input_ids"][3] != 0)
    assert [b["weights"].sum() for b in eval_batches(_ds(n=8), 4)] == [4, 4]
