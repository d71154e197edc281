"""Where a run's documents come from: the source, its files' identity, and the (lazy) split records.

`locate_source` decides the source and describes it without reading any document (so a warm cache
needs no data read); `SplitRecords` reads the records on first use, carves a validation split from
train when the corpus has none, and applies the seeded subsets.

A missing validation file is replaced by a seeded random ``validation_fraction`` of train
(`altgrad_jax.data.subsets.carve_indices`); the label vocabulary and the tokenizer are then built
from the remaining train documents only, and the test split is never used for model or threshold
selection.
"""

from __future__ import annotations

import dataclasses
import re
import time
import warnings
from typing import Any

from absl import logging

from altgrad_jax.data.errors import DataError
from altgrad_jax.data.hub import download_from_hub
from altgrad_jax.data.jsonl import read_jsonl
from altgrad_jax.data.paths import (SPLITS, default_cache_dir, find_split_file, require_data_dir,
                                    resolve_data_dir)
from altgrad_jax.data.subsets import carve_indices, subset_indices
from altgrad_jax.data.synthetic import SYNTHETIC_VERSION, make_synthetic_corpus

__all__ = ["SourceDesc", "SplitRecords", "SyntheticDataWarning", "locate_source"]


class SyntheticDataWarning(UserWarning):
    """Emitted whenever the synthetic corpus is used instead of real data."""


@dataclasses.dataclass(frozen=True)
class SourceDesc:
    """A data source, described without reading its documents.

    Attributes:
        dataset: ``"eurlex57k"`` (any JSONL corpus) or ``"synthetic"``.
        source: ``"jsonl"``, ``"hub"`` or ``"synthetic"``.
        data_dir: the folder read, or None for synthetic data.
        files: split -> file path (str); ``validation`` is absent when carved from train.
        identity: per split, the file's resolved path, size and mtime (or the synthetic generator's
            parameters): the cache keys are functions of it.
        validation: how the validation split is obtained (``"file <name>"``, ``"carved from
            train, fraction F, seed S"`` or ``"synthetic"``).
        carve: ``(fraction, seed)`` when validation is carved from train, else None.
        hub_name: the hub dataset for ``source="hub"``.
    """

    dataset: str
    source: str
    data_dir: str | None
    files: dict[str, str]
    identity: dict[str, Any]
    validation: str
    carve: tuple[float, int] | None = None
    hub_name: str | None = None


def _warn_synthetic(reason: str) -> None:
    banner = "!" * 78
    msg = (f"USING SYNTHETIC DATA ({reason}). Results are NOT about EURLEX57K. Provide real data "
           "with ALTGRAD_DATA_DIR, --config.data.data_dir or python -m altgrad_jax.data.prepare.")
    # Printed once: the Python warning reaches the terminal (and ``pytest.warns``); the log file
    # gets the banner at INFO, which the terminal (WARNING+) does not show a second time.
    logging.info("\n%s\n%s\n%s", banner, msg, banner)
    warnings.warn(f"\n{banner}\n{msg}\n{banner}", SyntheticDataWarning, stacklevel=5)


def _file_identity(path) -> dict[str, Any]:
    st = path.stat()
    return {"file": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _split_files(data_dir, validation_fraction: float) -> dict[str, Any]:
    files = {split: find_split_file(data_dir, split) for split in ("train", "test")}
    try:
        files["validation"] = find_split_file(data_dir, "validation")
    except DataError as e:
        if validation_fraction <= 0:
            raise DataError(f"{e} Or set data.validation_fraction > 0 (e.g. 0.1) to carve a "
                            "validation split from train.") from None
    return files


def locate_source(dc) -> SourceDesc:
    """Resolves ``dc.source`` (a `DataConfig`) and describes the data without reading documents.

    Raises:
        FileNotFoundError: ``source`` is ``jsonl``/``auto`` and the configured data dir is missing.
        DataError: a split file is missing (validation only when ``validation_fraction`` is 0).
    """
    source = dc.source
    if source == "auto":
        if resolve_data_dir(dc.data_dir) is None:
            source = "synthetic"
            _warn_synthetic("no data directory configured: data.source='auto' and neither "
                            "data.data_dir nor ALTGRAD_DATA_DIR is set")
        else:
            source = "jsonl"  # require_data_dir below reports a missing folder.
    elif source == "synthetic":
        _warn_synthetic("data.source='synthetic'")
    if source == "synthetic":
        identity = {"synthetic_version": SYNTHETIC_VERSION, "seed": dc.seed,
                    "num_train": dc.synthetic_num_train, "num_labels": dc.synthetic_num_labels,
                    "num_validation": dc.synthetic_num_validation,
                    "num_test": dc.synthetic_num_test}
        return SourceDesc(dataset="synthetic", source="synthetic", data_dir=None, files={},
                          identity=identity, validation="synthetic")
    if source == "hub":
        name = re.sub(r"[^A-Za-z0-9._-]+", "__", dc.hub_name)
        data_dir = download_from_hub(default_cache_dir(dc.cache_dir) / "hub" / name, dc.hub_name)
    else:
        data_dir = require_data_dir(dc.data_dir)
    files = _split_files(data_dir, dc.validation_fraction)
    carve = None
    if "validation" in files:
        validation = f"file {files['validation'].name}"
    else:
        carve = (float(dc.validation_fraction), int(dc.seed))
        validation = f"carved from train, fraction {carve[0]:g}, seed {carve[1]}"
    return SourceDesc(dataset="eurlex57k", source=source, data_dir=str(data_dir),
                      files={s: str(p) for s, p in files.items()},
                      identity={s: _file_identity(p) for s, p in files.items()},
                      validation=validation, carve=carve,
                      hub_name=dc.hub_name if source == "hub" else None)


class SplitRecords:
    """The split records of a `SourceDesc`, read on first `get` (then kept in memory).

    Args:
        dc: the `DataConfig` (subsets, seed, text/label fields, synthetic sizes).
        desc: from `locate_source`.
        label_field: the label field every record must carry.
    """

    def __init__(self, dc, desc: SourceDesc, label_field: str):
        self._dc, self._desc, self._field = dc, desc, label_field
        self._records: dict[str, list[dict]] | None = None
        self.full_sizes: dict[str, int] = {}
        # The label lists of the whole (kept) train split: the label vocabulary is built from
        # them, so it does not move with data.max_train_docs (a subset's top-100 differs).
        self.train_labels_full: list = []
        self.seconds = 0.0

    @property
    def loaded(self) -> bool:
        """Whether the records have been read."""
        return self._records is not None

    def get(self) -> dict[str, list[dict]]:
        """split -> records, after carving and subsetting (read once)."""
        if self._records is None:
            t0 = time.perf_counter()
            self._records = self._read()
            self.seconds = time.perf_counter() - t0
        return self._records

    def _read(self) -> dict[str, list[dict]]:
        dc, desc = self._dc, self._desc
        if desc.source == "synthetic":
            records = make_synthetic_corpus(dc.synthetic_num_train, dc.synthetic_num_validation,
                                            dc.synthetic_num_test, dc.synthetic_num_labels,
                                            dc.seed)
        else:
            records = {s: read_jsonl(p, fields=(), label_fields=(self._field,),
                                     text_field=dc.text_field) for s, p in desc.files.items()}
        if desc.carve is not None:
            kept, carved = carve_indices(len(records["train"]), *desc.carve)
            train = records["train"]
            records["train"] = [train[i] for i in kept]
            records["validation"] = [train[i] for i in carved]
            logging.info("No validation file: validation = %d train documents (%s); train keeps "
                         "%d.", len(carved), desc.validation, len(kept))
        for split in SPLITS:
            missing = sum(self._field not in r for r in records[split])
            if missing:
                raise DataError(f"{missing} {split} records lack the label field {self._field!r}. "
                                "Fix: set data.label_field to the field holding the labels or "
                                "choose another data.label_set.")
        self.full_sizes = {s: len(records[s]) for s in SPLITS}
        self.train_labels_full = [r[self._field] for r in records["train"]]
        max_docs = {"train": dc.max_train_docs, "validation": dc.max_validation_docs,
                    "test": dc.max_test_docs}
        for split in SPLITS:
            idx = subset_indices(len(records[split]), max_docs[split], dc.seed, split)
            if len(idx) < len(records[split]):
                records[split] = [records[split][i] for i in idx]
        return records
