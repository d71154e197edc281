"""A generated, learnable multi-label corpus for machines without the real data (SYNTHETIC).

Each label owns a handful of topic words; a document carries 1-5 labels (popular labels more often,
Zipf-like) and mixes its labels' topic words with noise words drawn from a shared Zipfian vocabulary.
A bag-of-words model can therefore learn the labels, but not trivially (noise dominates). Labels also
have a two-level hierarchy (``labels_level2`` = label // 5, ``labels_level1`` = label // 25) so every
label set works. Every record carries ``"synthetic": True``. Deterministic given the arguments.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["SYNTHETIC_VERSION", "make_synthetic_corpus"]

# Bump when the generator changes: it is part of the tokenizer cache fingerprint.
SYNTHETIC_VERSION = 1

_ONSETS = ("b", "c", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "st",
           "tr", "pl", "gr")
_NUCLEI = ("a", "e", "i", "o", "u", "ae", "io", "ou")


def _make_words(rng: np.random.Generator, count: int) -> list[str]:
    """``count`` distinct pronounceable pseudo-words of 2-4 syllables."""
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < count:
        n = int(rng.integers(2, 5))
        w = "".join(_ONSETS[int(rng.integers(len(_ONSETS)))] + _NUCLEI[int(rng.integers(len(_NUCLEI)))]
                    for _ in range(n))
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


def make_synthetic_corpus(
    num_train: int = 2000,
    num_validation: int = 500,
    num_test: int = 500,
    num_labels: int = 20,
    seed: int = 0,
    *,
    topic_words_per_label: int = 8,
    noise_vocab_size: int = 2000,
    topic_fraction: float = 0.25,
    min_words: int = 40,
    max_words: int = 300,
    max_labels_per_doc: int = 5,
) -> dict[str, list[dict[str, Any]]]:
    """Generates the synthetic corpus (clearly marked as synthetic).

    Args:
        num_train: documents in the train split.
        num_validation: documents in the validation split.
        num_test: documents in the test split.
        num_labels: number of distinct label ids (``"0"`` ... ``str(num_labels - 1)``).
        seed: everything is a deterministic function of the arguments.
        topic_words_per_label: topic words owned by each label.
        noise_vocab_size: size of the shared noise vocabulary.
        topic_fraction: expected fraction of a document's words that are topic words.
        min_words: minimum document length in words.
        max_words: maximum document length in words.
        max_labels_per_doc: each document has 1 to this many labels.

    Returns:
        ``{"train": [...], "validation": [...], "test": [...]}``; each record has ``text``,
        ``labels``, ``labels_level1``, ``labels_level2`` (lists of id strings), ``split``, ``doc_id``
        and ``synthetic: True``.

    Raises:
        ValueError: a size or fraction out of range.

    Example:
        >>> corpus = make_synthetic_corpus(4, 2, 2, num_labels=10, seed=1)
        >>> corpus["train"][0]["synthetic"], len(corpus["validation"])
        (True, 2)
    """
    for name, v in (("num_train", num_train), ("num_validation", num_validation),
                    ("num_test", num_test)):
        if v < 0:
            raise ValueError(f"{name} must be >= 0, got {v}.")
    if num_labels < 1:
        raise ValueError(f"num_labels must be >= 1, got {num_labels}.")
    if not 0.0 < topic_fraction <= 1.0:
        raise ValueError(f"topic_fraction must be in (0, 1], got {topic_fraction}.")
    if not 1 <= min_words <= max_words:
        raise ValueError(f"Need 1 <= min_words <= max_words, got {min_words}, {max_words}.")
    if max_labels_per_doc < 1:
        raise ValueError(f"max_labels_per_doc must be >= 1, got {max_labels_per_doc}.")

    rng = np.random.default_rng([seed, 0x5EED])
    words = _make_words(rng, num_labels * topic_words_per_label + noise_vocab_size)
    topic = np.array(words[: num_labels * topic_words_per_label]).reshape(
        num_labels, topic_words_per_label)
    noise = np.array(words[num_labels * topic_words_per_label:])
    noise_p = 1.0 / np.arange(1, noise_vocab_size + 1)
    noise_p /= noise_p.sum()
    label_p = 1.0 / np.arange(1, num_labels + 1) ** 0.8
    label_p /= label_p.sum()
    max_k = min(max_labels_per_doc, num_labels)

    corpus: dict[str, list[dict[str, Any]]] = {}
    for split_idx, (split, n) in enumerate(
            (("train", num_train), ("validation", num_validation), ("test", num_test))):
        srng = np.random.default_rng([seed, 0x5EED, split_idx + 1])
        records = []
        for i in range(n):
            k = int(srng.integers(1, max_k + 1))
            labs = np.sort(srng.choice(num_labels, size=k, replace=False, p=label_p))
            length = int(srng.integers(min_words, max_words + 1))
            is_topic = srng.random(length) < topic_fraction
            n_topic = int(is_topic.sum())
            toks = noise[srng.choice(noise_vocab_size, size=length, p=noise_p)]
            toks[is_topic] = topic[srng.choice(labs, size=n_topic),
                                   srng.integers(0, topic_words_per_label, size=n_topic)]
            records.append({
                "doc_id": f"synthetic-{split}-{i}",
                "text": " ".join(toks.tolist()) + ".",
                "labels": [str(x) for x in labs],
                "labels_level2": sorted({str(x // 5) for x in labs}, key=int),
                "labels_level1": sorted({str(x // 25) for x in labs}, key=int),
                "split": split,
                "synthetic": True,
            })
        corpus[split] = records
    return corpus
