"""Data package: label sets, label vocabulary, multi-hot encoding, OOV stats, subsets."""

import numpy as np
import pytest

from altgrad_jax.data import DataError, LabelVocab, build_label_vocab, subset_indices


def test_top100_order_by_count_then_numeric_id():
    # id i (for i in 1..120) appears in (i % 7) + 1 documents; plus "b" and "a" tie with the max.
    docs = []
    for i in range(1, 121):
        docs += [[str(i)]] * ((i % 7) + 1)
    docs += [["a", "b"]] * 7
    vocab = build_label_vocab(docs, "top100")
    assert len(vocab) == 100
    counts = {str(i): (i % 7) + 1 for i in range(1, 121)}
    counts.update(a=7, b=7)
    want = sorted(counts, key=lambda k: (-counts[k], 0 if k.isdigit() else 1,
                                         int(k) if k.isdigit() else 0, k))[:100]
    assert list(vocab.ids) == want
    assert vocab.ids[:4] == ("6", "13", "20", "27")  # count 7, numeric order ("13" < "6" as str)
    assert list(vocab.train_counts) == [counts[k] for k in want]
    assert vocab.label_set == "top100" and vocab.field == "labels"


def test_document_frequency_not_occurrences():
    vocab = build_label_vocab([["1", "1", "1"], ["2"], ["2"]], "all")
    assert vocab.ids == ("2", "1") and vocab.train_counts == (2, 1)


@pytest.mark.parametrize("label_set,field", [("level1", "labels_level1"),
                                             ("level2", "labels_level2"), ("all", "labels")])
def test_level_sets_keep_everything_seen_in_train(label_set, field):
    lists = [[str(i % 30), "x"] for i in range(200)]
    vocab = build_label_vocab(lists, label_set)
    assert len(vocab) == 31 and vocab.field == field and vocab.ids[0] == "x"


def test_unknown_label_set_lists_valid_names():
    with pytest.raises(ValueError, match="top100, level1, level2, all"):
        build_label_vocab([["1"]], "top10")
    with pytest.raises(DataError, match="no labels"):
        build_label_vocab([[], []], "all")


def test_multi_hot_and_oov():
    vocab = LabelVocab(ids=("5", "3", "9"), label_set="all")
    y = vocab.encode([["3"], ["9", "5", "77"], [], ["77", "88", "77"]])
    assert y.dtype == np.float32 and y.shape == (4, 3)
    np.testing.assert_array_equal(y, [[0, 1, 0], [1, 0, 1], [0, 0, 0], [0, 0, 0]])
    stats = vocab.oov_stats([["3"], ["9", "5", "77"], [], ["77", "88", "77"]])
    assert stats == {"label_occurrences": 7, "oov_label_occurrences": 4, "oov_label_ids": 2,
                     "docs_without_labels": 2}


def test_vocab_save_load_roundtrip(tmp_path):
    vocab = build_label_vocab([["b", "a"], ["a"]], "all")
    path = vocab.save(tmp_path / "label_vocab.json")
    back = LabelVocab.load(path)
    assert back == vocab and back.index("a") == 0
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="bad.json"):
        LabelVocab.load(tmp_path / "bad.json")


def test_subsets_are_seeded_random_not_prefix():
    a = subset_indices(1000, 50, seed=0, split="train")
    assert len(a) == 50 and len(set(a.tolist())) == 50 and np.all(np.diff(a) > 0)
    np.testing.assert_array_equal(a, subset_indices(1000, 50, seed=0, split="train"))
    assert not np.array_equal(a, subset_indices(1000, 50, seed=1, split="train"))
    assert not np.array_equal(a, subset_indices(1000, 50, seed=0, split="validation"))
    assert not np.array_equal(a, np.arange(50))
    assert a.max() > 500  # spread over the whole (date-ordered) file
    np.testing.assert_array_equal(subset_indices(10, 0, 0, "test"), np.arange(10))
    np.testing.assert_array_equal(subset_indices(10, 20, 0, "test"), np.arange(10))
    with pytest.raises(ValueError, match="max_docs"):
        subset_indices(10, -1, 0, "test")
