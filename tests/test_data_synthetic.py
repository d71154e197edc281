"""Data package: the synthetic corpus is marked, deterministic and learnable."""

import collections

import numpy as np

from altgrad_jax.data import make_synthetic_corpus


def test_marked_and_shaped():
    c = make_synthetic_corpus(30, 10, 12, num_labels=12, seed=3)
    assert {k: len(v) for k, v in c.items()} == {"train": 30, "validation": 10, "test": 12}
    for split, recs in c.items():
        for r in recs:
            assert r["synthetic"] is True and r["split"] == split and r["text"].strip()
            assert 1 <= len(r["labels"]) <= 5 and all(isinstance(x, str) for x in r["labels"])
            assert all(0 <= int(x) < 12 for x in r["labels"])
            assert r["labels_level2"] == sorted({str(int(x) // 5) for x in r["labels"]}, key=int)


def test_deterministic_from_seed():
    a = make_synthetic_corpus(20, 5, 5, num_labels=10, seed=7)
    assert a == make_synthetic_corpus(20, 5, 5, num_labels=10, seed=7)
    assert a["train"] != make_synthetic_corpus(20, 5, 5, num_labels=10, seed=8)["train"]
    # The train split does not depend on the other splits' sizes.
    assert a["train"] == make_synthetic_corpus(20, 9, 1, num_labels=10, seed=7)["train"]


def test_topic_words_signal():
    c = make_synthetic_corpus(600, 1, 1, num_labels=10, seed=0)["train"]
    for label in ("0", "5"):
        with_l = [r["text"].rstrip(".").split() for r in c if label in r["labels"]]
        without = [r["text"].rstrip(".").split() for r in c if label not in r["labels"]]
        freq_with = collections.Counter(w for d in with_l for w in d)
        freq_without = collections.Counter(w for d in without for w in d)
        n_with = sum(map(len, with_l))
        n_without = sum(map(len, without))
        # The words most over-represented in the label's documents: its topic words.
        ratio = {w: (freq_with[w] / n_with) / ((freq_without[w] + 1) / n_without)
                 for w in freq_with if freq_with[w] >= 20}
        top = sorted(ratio.values(), reverse=True)[:8]
        assert min(top) > 5.0, (label, top)
    # Noise dominates: most words are shared across labels.
    lengths = np.array([len(r["text"].split()) for r in c])
    assert lengths.min() >= 40 and lengths.max() <= 300
