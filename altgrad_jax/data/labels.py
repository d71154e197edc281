"""Label sets and the label vocabulary (label ids <-> columns of the multi-hot target).

Label sets (``config.data.label_set``), all computed from the train split only:

* ``top100``: the 100 most frequent concept ids (field ``labels``).
* ``level1``: every value of ``labels_level1`` seen in train (EuroVoc domains, 21 on EURLEX57K).
* ``level2``: every value of ``labels_level2`` seen in train (microthesauri, 127 on EURLEX57K).
* ``all``: every concept id seen in train (field ``labels``).

Every vocabulary is ordered by train frequency, most frequent first, ties broken by id (numeric ids
compare as numbers). Labels outside the vocabulary are counted (`LabelVocab.oov_stats`), not fatal.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import pathlib
from typing import Iterable, Sequence

import numpy as np

from altgrad_jax.data.errors import DataError

__all__ = ["LABEL_SETS", "LabelSetSpec", "LabelVocab", "build_label_vocab", "label_sort_key"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class LabelSetSpec:
    """How a label set is built.

    Attributes:
        field: record field holding the label ids.
        max_labels: keep only the most frequent ``max_labels`` ids; None keeps all seen in train.
    """

    field: str
    max_labels: int | None = None


LABEL_SETS: dict[str, LabelSetSpec] = {
    "top100": LabelSetSpec(field="labels", max_labels=100),
    "level1": LabelSetSpec(field="labels_level1"),
    "level2": LabelSetSpec(field="labels_level2"),
    "all": LabelSetSpec(field="labels"),
}


def get_label_set(name: str) -> LabelSetSpec:
    """Looks up a label set by name; the error lists the valid names."""
    try:
        return LABEL_SETS[name]
    except KeyError:
        raise ValueError(
            f"Unknown label_set {name!r}; valid names: {', '.join(LABEL_SETS)}.") from None


def label_sort_key(label_id: str) -> tuple[int, int, str]:
    """Sort key for label ids: numeric ids by value, before non-numeric ids (by string)."""
    return (0, int(label_id), label_id) if label_id.isdigit() else (1, 0, label_id)


@dataclasses.dataclass(frozen=True)
class LabelVocab:
    """An ordered label vocabulary; column ``j`` of the multi-hot target is ``ids[j]``.

    Attributes:
        ids: label ids in column order.
        label_set: name of the label set it was built for.
        field: the record field the ids come from.
        train_counts: number of train documents carrying each id (same order as ``ids``).

    Example:
        >>> vocab = LabelVocab(ids=("7", "3"), label_set="all", field="labels")
        >>> vocab.encode([["3"], ["7", "3", "99"]]).tolist()
        [[0.0, 1.0], [1.0, 1.0]]
    """

    ids: tuple[str, ...]
    label_set: str = "custom"
    field: str = "labels"
    train_counts: tuple[int, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "ids", tuple(str(i) for i in self.ids))
        object.__setattr__(self, "train_counts", tuple(int(c) for c in self.train_counts))
        if len(set(self.ids)) != len(self.ids):
            raise DataError(f"LabelVocab ids must be unique; got duplicates in {self.ids[:10]}...")
        if self.train_counts and len(self.train_counts) != len(self.ids):
            raise DataError("LabelVocab train_counts must have one entry per id "
                            f"({len(self.train_counts)} != {len(self.ids)}).")
        object.__setattr__(self, "_index", {lab: j for j, lab in enumerate(self.ids)})

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_labels(self) -> int:
        """Number of columns of the multi-hot target."""
        return len(self.ids)

    def index(self, label_id: str) -> int:
        """Column of ``label_id``; raises KeyError if it is not in the vocabulary."""
        return self._index[str(label_id)]

    def encode(self, label_lists: Sequence[Iterable[str]]) -> np.ndarray:
        """Multi-hot encodes label lists; ids outside the vocabulary are ignored.

        Args:
            label_lists: one iterable of label ids per document.

        Returns:
            ``float32`` array ``[N, num_labels]`` with 1.0 where the document has the label.
        """
        out = np.zeros((len(label_lists), len(self.ids)), dtype=np.float32)
        index = self._index
        for row, labels in enumerate(label_lists):
            cols = [index[lab] for lab in labels if lab in index]
            out[row, cols] = 1.0
        return out

    def oov_stats(self, label_lists: Sequence[Iterable[str]]) -> dict[str, int]:
        """Counts labels outside the vocabulary.

        Returns:
            ``oov_label_occurrences`` (label occurrences not in the vocabulary),
            ``oov_label_ids`` (distinct such ids), ``docs_without_labels`` (documents left with no
            in-vocabulary label) and ``label_occurrences`` (all occurrences).
        """
        index = self._index
        occurrences = oov = empty = 0
        oov_ids = set()
        for labels in label_lists:
            labels = list(labels)
            inside = 0
            for lab in labels:
                if lab in index:
                    inside += 1
                else:
                    oov_ids.add(lab)
            occurrences += len(labels)
            oov += len(labels) - inside
            empty += inside == 0
        return {"label_occurrences": occurrences, "oov_label_occurrences": oov,
                "oov_label_ids": len(oov_ids), "docs_without_labels": empty}

    def to_json(self) -> dict:
        """A JSON-serializable dict (see `from_json`)."""
        return {"label_set": self.label_set, "field": self.field, "ids": list(self.ids),
                "train_counts": list(self.train_counts)}

    @classmethod
    def from_json(cls, obj: dict) -> "LabelVocab":
        """Inverse of `to_json`."""
        try:
            return cls(ids=tuple(obj["ids"]), label_set=obj.get("label_set", "custom"),
                       field=obj.get("field", "labels"),
                       train_counts=tuple(obj.get("train_counts", ())))
        except (KeyError, TypeError) as e:
            raise DataError(f"Not a label vocabulary JSON object ({e}); expected keys 'ids', "
                            "'label_set', 'field', 'train_counts'.") from e

    def save(self, path: str | os.PathLike) -> pathlib.Path:
        """Writes the vocabulary as JSON."""
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LabelVocab":
        """Reads a vocabulary written by `save`."""
        path = pathlib.Path(path)
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: malformed label vocabulary JSON ({e}). Fix: delete it so it "
                            "is rebuilt from the train split.") from e
        return cls.from_json(obj)


def build_label_vocab(train_label_lists: Iterable[Iterable[str]], label_set: str, *,
                      field: str | None = None) -> LabelVocab:
    """Builds a label set's vocabulary from the train split's label lists.

    Args:
        train_label_lists: for each train document, its ids in the label set's field
            (``LABEL_SETS[label_set].field``).
        label_set: a name in `LABEL_SETS`.
        field: the record field the ids come from (``data.label_field``); None = the label
            set's own field.

    Returns:
        The vocabulary, ordered by train document frequency (descending), ties by id.

    Raises:
        ValueError: unknown ``label_set``.
        DataError: the train split has no labels at all.
    """
    spec = get_label_set(label_set)
    field = field or spec.field
    counts: collections.Counter[str] = collections.Counter()
    for labels in train_label_lists:
        counts.update(set(labels))
    if not counts:
        raise DataError(f"The train split has no labels in field {field!r}, so the label set "
                        f"{label_set!r} is empty. Fix: check the data or choose another label_set "
                        f"({', '.join(LABEL_SETS)}).")
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], label_sort_key(kv[0])))
    if spec.max_labels is not None:
        ordered = ordered[: spec.max_labels]
    return LabelVocab(ids=tuple(k for k, _ in ordered), label_set=label_set, field=field,
                      train_counts=tuple(c for _, c in ordered))
