"""``build_data(config, workdir)``: from a data config to encoded train/validation/test arrays.

Config fields (``config.data.<field>``; `DataConfig` holds the defaults):

* ``source``: ``"auto"`` | ``"jsonl"`` | ``"hub"`` | ``"synthetic"``. ``auto`` reads JSONL from the
  data dir if one is configured, else falls back to the synthetic corpus with a loud warning.
* ``data_dir``: folder with ``{train,validation,test}.jsonl[.gz]``; ``""`` = ``$ALTGRAD_DATA_DIR``.
* ``hub_name``: Hugging Face dataset for ``source="hub"`` (downloaded once into the cache dir).
* ``label_set``: ``"top100"`` | ``"level1"`` | ``"level2"`` | ``"all"`` (built from train only).
* ``max_length``: tokens per document, ``[CLS]`` included; longer documents are truncated.
* ``vocab_size``: WordPiece vocabulary size (special tokens included).
* ``lowercase``: lowercase and strip accents before tokenizing.
* ``max_train_docs``: random train subset size (seeded); 0 = all.
* ``max_validation_docs``: random validation subset size (seeded); 0 = all.
* ``max_test_docs``: random test subset size (seeded); 0 = all.
* ``seed``: seed for subsets, the validation carve and the synthetic corpus.
* ``tokenizer_file``: a saved tokenizer JSON to load instead of training one (``""`` = train, or
  reuse the cached one); relative paths resolve against the current directory. WordPiece training
  is not reproducible across processes, so runs compared across machines pin a file. Either way
  ``data_info.json["tokenizer_sha256"]`` identifies the tokenizer used.
* ``cache_dir``: cache root (tokenizers, encoded splits, hub downloads); ``""`` =
  ``$ALTGRAD_CACHE_DIR`` or ``~/.cache/altgrad_jax``. Safe for runs started in parallel.
* ``cache_encoded``: cache the encoded (tokenized, padded, multi-hot) splits as ``.npz`` under
  ``<cache_dir>/encoded/``, keyed by a SHA-256 of everything that determines them (data files'
  path/size/mtime, tokenizer, ``max_length``, label set and field, subsets, validation carve), so
  a sweep pays the data build once.
* ``text_field``: JSONL field holding the document text (default ``text``).
* ``label_field``: JSONL field holding the label ids; ``""`` = the label set's own field
  (``labels``, ``labels_level1``, ``labels_level2``).
* ``validation_fraction``: when the corpus has no validation file, this seeded random fraction of
  train (seed ``data.seed``) becomes the validation split, announced in the log and in
  ``data_info.json["validation"]``; 0 = a missing validation file is an error.
* ``synthetic_num_train``: synthetic train documents.
* ``synthetic_num_validation``: synthetic validation documents.
* ``synthetic_num_test``: synthetic test documents.
* ``synthetic_num_labels``: synthetic label count.

With a ``workdir``, ``label_vocab.json``, ``tokenizer.json`` and ``data_info.json`` are written there;
if the run folder already has ``label_vocab.json`` / ``tokenizer.json`` they are reused, so a resumed
run or an evaluation sees the same label columns and token ids.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
from typing import Any, Mapping

import numpy as np
from absl import logging
from tokenizers import Tokenizer

from altgrad_jax.data import cache as cache_lib
from altgrad_jax.data.batching import ArrayDataset
from altgrad_jax.data.errors import DataError
from altgrad_jax.data.hub import DEFAULT_HUB_NAME
from altgrad_jax.data.labels import LabelVocab, build_label_vocab, get_label_set
from altgrad_jax.data.paths import SPLITS, default_cache_dir
from altgrad_jax.data.records import SourceDesc, SplitRecords, SyntheticDataWarning, locate_source
from altgrad_jax.data.tokenizer import (PAD_ID, encode_texts, get_or_train_tokenizer,
                                       load_tokenizer_file, tokenizer_sha256)

__all__ = ["SOURCES", "DataConfig", "DataBundle", "SyntheticDataWarning", "build_data"]

SOURCES = ("auto", "jsonl", "hub", "synthetic")
LABEL_VOCAB_FILE = "label_vocab.json"
TOKENIZER_FILE = "tokenizer.json"
DATA_INFO_FILE = "data_info.json"
ENCODED_VERSION = 2  # bump when the encoding changes: it is part of the encoded-splits cache key


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
    """The data config with its defaults (see the module docstring for each field)."""

    source: str = "auto"
    data_dir: str = ""
    hub_name: str = DEFAULT_HUB_NAME
    label_set: str = "top100"
    max_length: int = 256
    vocab_size: int = 16000
    lowercase: bool = True
    max_train_docs: int = 0
    max_validation_docs: int = 0
    max_test_docs: int = 0
    seed: int = 0
    cache_dir: str = ""
    tokenizer_file: str = ""
    cache_encoded: bool = True
    text_field: str = "text"
    label_field: str = ""
    validation_fraction: float = 0.1
    synthetic_num_train: int = 2000
    synthetic_num_validation: int = 500
    synthetic_num_test: int = 500
    synthetic_num_labels: int = 20

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"Unknown data source {self.source!r}; valid: {', '.join(SOURCES)}.")
        get_label_set(self.label_set)
        if self.max_length < 2:
            raise ValueError(f"data.max_length must be >= 2, got {self.max_length}.")
        if self.vocab_size < 5:
            raise ValueError(f"data.vocab_size must be >= 5, got {self.vocab_size}.")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"data.validation_fraction must be in [0, 1) (0 = never carve a "
                             f"validation split from train), got {self.validation_fraction}.")
        if not self.text_field:
            raise ValueError("data.text_field must name the JSONL field holding the text "
                             "(default 'text').")
        for name in ("max_train_docs", "max_validation_docs", "max_test_docs"):
            if getattr(self, name) < 0:
                raise ValueError(f"data.{name} must be >= 0 (0 = all), got {getattr(self, name)}.")
        for name in ("synthetic_num_train", "synthetic_num_validation", "synthetic_num_test",
                     "synthetic_num_labels"):
            if getattr(self, name) < 1:
                raise ValueError(f"data.{name} must be >= 1, got {getattr(self, name)}.")

    @classmethod
    def from_config(cls, cfg: Any) -> "DataConfig":
        """Reads the fields from a ConfigDict, a mapping or any attribute object.

        Missing fields take the defaults; values are converted to the field types.
        """
        if isinstance(cfg, cls):
            return cfg
        values = {}
        for field in dataclasses.fields(cls):
            if isinstance(cfg, Mapping):
                present = field.name in cfg
                value = cfg[field.name] if present else None
            else:
                present = hasattr(cfg, field.name)
                value = getattr(cfg, field.name) if present else None
            if present and value is not None:
                caster = {"str": str, "int": int, "bool": bool, "float": float}[field.type]
                values[field.name] = caster(value)
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class DataBundle:
    """Everything the training loop needs from the data.

    Attributes:
        train: training split.
        validation: validation split.
        test: test split.
        vocab: label vocabulary (columns of ``labels``).
        tokenizer: the WordPiece tokenizer (``tokenizers.Tokenizer``).
        info: JSON-serializable description (dataset, source, sizes, label stats, truncation).
    """

    train: ArrayDataset
    validation: ArrayDataset
    test: ArrayDataset
    vocab: LabelVocab
    tokenizer: Tokenizer
    info: dict[str, Any]

    @property
    def num_labels(self) -> int:
        """Number of label columns."""
        return self.vocab.num_labels

    @property
    def max_length(self) -> int:
        """Sequence length."""
        return self.train.max_length


def _tokenizer_key(dc: DataConfig, desc: SourceDesc) -> dict[str, Any]:
    """Everything that determines the tokenizer's training texts (its cache fingerprint)."""
    key = dict(desc.identity.get("train", desc.identity), max_train_docs=dc.max_train_docs)
    if dc.max_train_docs > 0:
        key["subset_seed"] = dc.seed
    if desc.carve is not None:
        key["validation_carve"] = list(desc.carve)
    if dc.text_field != "text" and desc.source != "synthetic":
        key["text_field"] = dc.text_field
    return key


def _encoded_key(dc: DataConfig, desc: SourceDesc, tokenizer: Tokenizer, label_field: str,
                 run_vocab: LabelVocab | None) -> dict[str, Any]:
    """Everything that determines the encoded splits (their cache key)."""
    return {
        "version": ENCODED_VERSION, "identity": desc.identity, "carve": desc.carve,
        "tokenizer": tokenizer_sha256(tokenizer),
        "max_length": dc.max_length, "label_set": dc.label_set, "label_field": label_field,
        "text_field": dc.text_field if desc.source != "synthetic" else "text",
        "subsets": [dc.max_train_docs, dc.max_validation_docs, dc.max_test_docs, dc.seed],
        "run_vocab": cache_lib.digest(run_vocab.to_json(), 64) if run_vocab else None,
    }


def _encode_splits(records: dict[str, list[dict]], full_sizes: dict[str, int], dc: DataConfig,
                   tokenizer: Tokenizer, text_field: str, label_field: str,
                   run_vocab: LabelVocab | None, train_labels_full: list
                   ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Tokenizes, pads and multi-hot encodes every split (the cold path of the encoded cache).

    The label vocabulary comes from the whole (kept) train split, not the ``max_train_docs``
    subset, so the label set of a run does not depend on how much of train it trains on.
    """
    vocab = build_label_vocab(iter(train_labels_full), dc.label_set, field=label_field)
    if run_vocab is not None:
        if run_vocab.ids != vocab.ids:
            logging.warning("The run folder's %s differs from the one built from the data "
                            "(%d vs %d labels); using the run folder's so columns stay stable.",
                            LABEL_VOCAB_FILE, len(run_vocab), len(vocab))
        vocab = run_vocab
    arrays, oov = {}, {}
    for split in SPLITS:
        label_lists = [r[label_field] for r in records[split]]
        enc = encode_texts(tokenizer, [r[text_field] for r in records[split]], dc.max_length)
        arrays[f"{split}_input_ids"] = enc.input_ids
        arrays[f"{split}_labels"] = vocab.encode(label_lists).astype(np.uint8)
        arrays[f"{split}_truncated"] = enc.truncated
        oov[split] = vocab.oov_stats(label_lists)
    return arrays, {"vocab": vocab.to_json(), "oov": oov, "full_sizes": full_sizes}


def _split_stats(ds: ArrayDataset, truncated: np.ndarray) -> tuple[float, float, float]:
    """(truncation rate, mean labels per doc, mean tokens per doc) of a split."""
    if len(ds) == 0:
        return 0.0, 0.0, 0.0
    return (round(float(truncated.mean()), 4), round(float(ds.labels.sum(1).mean()), 4),
            round(float((ds.input_ids != PAD_ID).sum(1).mean()), 2))


def _run_vocab(workdir: pathlib.Path | None, label_set: str) -> LabelVocab | None:
    """The run folder's label vocabulary (resume, evaluation), checked against the config."""
    if workdir is None or not (workdir / LABEL_VOCAB_FILE).is_file():
        return None
    saved = LabelVocab.load(workdir / LABEL_VOCAB_FILE)
    if saved.label_set != label_set:
        raise DataError(
            f"The run folder {str(workdir)!r} holds a {LABEL_VOCAB_FILE} for label_set="
            f"{saved.label_set!r} but the config asks for {label_set!r}. Fix: use a new "
            "workdir for a different label set (or set data.label_set back).")
    return saved


def _get_tokenizer(dc: DataConfig, desc: SourceDesc, records: SplitRecords, text_field: str,
                   workdir: pathlib.Path | None) -> tuple[Tokenizer, dict[str, Any]]:
    """The pinned ``data.tokenizer_file`` if set, else the run's / cached / trained tokenizer."""
    run_path = workdir / TOKENIZER_FILE if workdir is not None else None
    if dc.tokenizer_file:
        tok, info = load_tokenizer_file(dc.tokenizer_file, run_path=run_path)
        if tok.get_vocab_size() != dc.vocab_size:
            logging.info("data.tokenizer_file has %d tokens (data.vocab_size=%d is unused).",
                         tok.get_vocab_size(), dc.vocab_size)
        return tok, info
    return get_or_train_tokenizer(
        lambda: [r[text_field] for r in records.get()["train"]], vocab_size=dc.vocab_size,
        lowercase=dc.lowercase, cache_key=_tokenizer_key(dc, desc),
        cache_dir=default_cache_dir(dc.cache_dir) / "tokenizers", run_path=run_path)


def _cached_encode(dc: DataConfig, key: dict[str, Any], build) -> tuple[dict, dict, str]:
    """``build()``'s (arrays, meta) through the encoded-splits cache; also says hit/built/off."""
    if not dc.cache_encoded:
        return (*build(), "off")
    path = default_cache_dir(dc.cache_dir) / "encoded" / f"{cache_lib.digest(key)}.npz"
    with cache_lib.entry_lock(path):
        hit = cache_lib.load_arrays(path, key=key)
        if hit is not None:
            meta = hit.pop("__meta__")
            return hit, meta, "hit"
        arrays, meta = build()
        cache_lib.save_arrays(path, arrays, key=key, meta=meta)
        cache_lib.atomic_write_text(path.with_suffix(".key.json"),
                                    json.dumps(key, indent=1, default=str))
    return arrays, meta, "built"


def build_data(cfg: Any, workdir: str | os.PathLike | None = None) -> DataBundle:
    """Builds the encoded splits, label vocabulary and tokenizer described by ``cfg``.

    Args:
        cfg: the data config (``config.data``): a ConfigDict, mapping, attribute object or
            `DataConfig`; fields are listed in this module's docstring.
        workdir: run folder; when given, ``label_vocab.json``, ``tokenizer.json`` and
            ``data_info.json`` are written there (and existing vocab/tokenizer files reused).

    Returns:
        The `DataBundle`.

    Raises:
        FileNotFoundError: ``source`` is ``jsonl``/``auto`` and the configured data dir is missing.
        DataError: malformed data files or a hub download failure.
        ValueError: an invalid config value.
    """
    dc = DataConfig.from_config(cfg)
    t0 = time.perf_counter()
    label_field = dc.label_field or get_label_set(dc.label_set).field
    desc = locate_source(dc)
    text_field = "text" if desc.source == "synthetic" else dc.text_field
    records = SplitRecords(dc, desc, label_field)

    workdir_path = pathlib.Path(workdir).expanduser() if workdir else None
    if workdir_path is not None:
        workdir_path.mkdir(parents=True, exist_ok=True)
    run_vocab = _run_vocab(workdir_path, dc.label_set)

    t1 = time.perf_counter()
    tokenizer, tok_info = _get_tokenizer(dc, desc, records, text_field, workdir_path)
    t_tok = time.perf_counter() - t1

    t2, read_before = time.perf_counter(), records.loaded
    arrays, meta, cache_state = _cached_encode(
        dc, _encoded_key(dc, desc, tokenizer, label_field, run_vocab),
        lambda: _encode_splits(records.get(), records.full_sizes, dc, tokenizer, text_field,
                               label_field, run_vocab, records.train_labels_full))
    t_enc = time.perf_counter() - t2 - (0.0 if read_before else records.seconds)
    vocab = LabelVocab.from_json(meta["vocab"])
    datasets = {s: ArrayDataset(arrays[f"{s}_input_ids"], arrays[f"{s}_labels"], s)
                for s in SPLITS}
    stats = {s: _split_stats(datasets[s], arrays[f"{s}_truncated"]) for s in SPLITS}

    train_pos = datasets["train"].labels.sum(0)
    info = {
        "dataset": desc.dataset,
        "synthetic": desc.dataset == "synthetic",
        "source": desc.source,
        "data_dir": desc.data_dir,
        **({"hub_name": desc.hub_name} if desc.hub_name else {}),
        "validation": desc.validation,
        "text_field": text_field,
        "label_set": vocab.label_set,
        "label_field": vocab.field,
        "num_labels": vocab.num_labels,
        "sizes": {s: len(datasets[s]) for s in SPLITS},
        "full_sizes": meta["full_sizes"],
        "seed": dc.seed,
        "max_length": dc.max_length,
        "vocab_size": tokenizer.get_vocab_size(),
        "lowercase": dc.lowercase,
        "tokenizer": tok_info,
        "tokenizer_sha256": tokenizer_sha256(tokenizer),
        "encoded_cache": cache_state,
        "oov": meta["oov"],
        "mean_labels_per_doc": {s: stats[s][1] for s in SPLITS},
        "labels_without_train_positives": int((train_pos == 0).sum()),
        "truncation_rate": {s: stats[s][0] for s in SPLITS},
        "mean_tokens_per_doc": {s: stats[s][2] for s in SPLITS},
        "seconds": {"read": round(records.seconds, 3), "tokenizer": round(t_tok, 3),
                    "encode": round(t_enc, 3), "total": round(time.perf_counter() - t0, 3)},
    }
    logging.info("Data: %s/%s, label_set=%s (%d labels), sizes=%s, validation: %s, "
                 "truncation=%.3f, %.1f s (tokenizer %s, encoded splits %s).",
                 info["dataset"], info["source"], info["label_set"], info["num_labels"],
                 info["sizes"], desc.validation, info["truncation_rate"]["train"],
                 info["seconds"]["total"], tok_info["origin"], cache_state)
    if workdir_path is not None:
        if not (workdir_path / LABEL_VOCAB_FILE).is_file():
            vocab.save(workdir_path / LABEL_VOCAB_FILE)
        cache_lib.atomic_write_text(workdir_path / DATA_INFO_FILE, json.dumps(info, indent=1) + "\n")
    return DataBundle(train=datasets["train"], validation=datasets["validation"],
                      test=datasets["test"], vocab=vocab, tokenizer=tokenizer, info=info)
