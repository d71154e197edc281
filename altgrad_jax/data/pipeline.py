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
* ``seed``: seed for subsets and the synthetic corpus.
* ``cache_dir``: cache root (tokenizers, hub downloads); ``""`` = ``$ALTGRAD_CACHE_DIR`` or
  ``~/.cache/altgrad_jax``.
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
import re
import time
import warnings
from typing import Any, Mapping

from absl import logging
from tokenizers import Tokenizer

from altgrad_jax.data.batching import ArrayDataset
from altgrad_jax.data.errors import DataError
from altgrad_jax.data.hub import DEFAULT_HUB_NAME, download_from_hub
from altgrad_jax.data.jsonl import read_jsonl
from altgrad_jax.data.labels import LABEL_SETS, LabelVocab, build_label_vocab, get_label_set
from altgrad_jax.data.paths import (SPLITS, default_cache_dir, find_split_file, require_data_dir,
                                    resolve_data_dir)
from altgrad_jax.data.subsets import subset_indices
from altgrad_jax.data.synthetic import SYNTHETIC_VERSION, make_synthetic_corpus
from altgrad_jax.data.tokenizer import encode_texts, get_or_train_tokenizer

__all__ = ["SOURCES", "DataConfig", "DataBundle", "SyntheticDataWarning", "build_data"]

SOURCES = ("auto", "jsonl", "hub", "synthetic")
LABEL_VOCAB_FILE = "label_vocab.json"
TOKENIZER_FILE = "tokenizer.json"
DATA_INFO_FILE = "data_info.json"


class SyntheticDataWarning(UserWarning):
    """Emitted whenever the synthetic corpus is used instead of real data."""


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
                caster = {"str": str, "int": int, "bool": bool}[field.type]
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


def _warn_synthetic(reason: str) -> None:
    banner = "!" * 78
    msg = (f"USING SYNTHETIC DATA ({reason}). Results are NOT about EURLEX57K. Provide real data "
           "with ALTGRAD_DATA_DIR, --config.data.data_dir or python -m altgrad_jax.data.prepare.")
    logging.warning("\n%s\n%s\n%s", banner, msg, banner)
    warnings.warn(msg, SyntheticDataWarning, stacklevel=4)


def _file_identity(path: pathlib.Path) -> dict[str, Any]:
    st = path.stat()
    return {"file": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _load_records(dc: DataConfig, field: str) -> tuple[dict[str, list[dict]], dict[str, Any]]:
    """Raw split records and a description of where they came from."""
    source = dc.source
    if source == "auto":
        resolved = resolve_data_dir(dc.data_dir)
        if resolved is None:
            source = "synthetic"
            _warn_synthetic("no data directory configured: data.source='auto' and neither "
                            "data.data_dir nor ALTGRAD_DATA_DIR is set")
        else:
            source = "jsonl"  # require_data_dir below reports a missing folder.
    elif source == "synthetic":
        _warn_synthetic("data.source='synthetic'")

    if source == "synthetic":
        corpus = make_synthetic_corpus(dc.synthetic_num_train, dc.synthetic_num_validation,
                                       dc.synthetic_num_test, dc.synthetic_num_labels, dc.seed)
        identity = {"synthetic_version": SYNTHETIC_VERSION, "seed": dc.seed,
                    "num_train": dc.synthetic_num_train, "num_labels": dc.synthetic_num_labels}
        return corpus, {"dataset": "synthetic", "source": "synthetic", "data_dir": None,
                        "identity": identity}

    if source == "hub":
        name = re.sub(r"[^A-Za-z0-9._-]+", "__", dc.hub_name)
        data_dir = download_from_hub(default_cache_dir(dc.cache_dir) / "hub" / name, dc.hub_name)
    else:
        data_dir = require_data_dir(dc.data_dir)
    records, files = {}, {}
    for split in SPLITS:
        path = find_split_file(data_dir, split)
        records[split] = read_jsonl(path, fields=(), label_fields=(field,))
        files[split] = path
    desc = {"dataset": "eurlex57k", "source": source, "data_dir": str(data_dir),
            "identity": _file_identity(files["train"])}
    if source == "hub":
        desc["hub_name"] = dc.hub_name
    return records, desc


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
    spec = get_label_set(dc.label_set)
    records, desc = _load_records(dc, spec.field)
    t_read = time.perf_counter() - t0
    for split in SPLITS:
        missing = [i for i, r in enumerate(records[split]) if spec.field not in r]
        if missing:
            raise DataError(f"{len(missing)} {split} records lack the field {spec.field!r} needed "
                            f"by label_set={dc.label_set!r}. Fix: choose another label_set "
                            f"({', '.join(LABEL_SETS)}) or add the field.")

    workdir_path = pathlib.Path(workdir).expanduser() if workdir else None
    if workdir_path is not None:
        workdir_path.mkdir(parents=True, exist_ok=True)

    # The label vocabulary comes from the full train split (so it does not move with subsets).
    vocab = build_label_vocab((r[spec.field] for r in records["train"]), dc.label_set)
    if workdir_path is not None and (workdir_path / LABEL_VOCAB_FILE).is_file():
        saved = LabelVocab.load(workdir_path / LABEL_VOCAB_FILE)
        if saved.label_set != vocab.label_set:
            raise DataError(
                f"The run folder {str(workdir_path)!r} holds a {LABEL_VOCAB_FILE} for label_set="
                f"{saved.label_set!r} but the config asks for {vocab.label_set!r}. Fix: use a new "
                "workdir for a different label set (or set data.label_set back).")
        if saved.ids != vocab.ids:
            logging.warning("The run folder's %s differs from the one built from the data "
                            "(%d vs %d labels); using the run folder's so columns stay stable.",
                            LABEL_VOCAB_FILE, len(saved), len(vocab))
        vocab = saved

    full_sizes = {s: len(records[s]) for s in SPLITS}
    max_docs = {"train": dc.max_train_docs, "validation": dc.max_validation_docs,
                "test": dc.max_test_docs}
    for split in SPLITS:
        idx = subset_indices(len(records[split]), max_docs[split], dc.seed, split)
        if len(idx) < len(records[split]):
            records[split] = [records[split][i] for i in idx]

    cache_key = dict(desc["identity"], max_train_docs=dc.max_train_docs)
    if 0 < dc.max_train_docs < full_sizes["train"]:
        cache_key["subset_seed"] = dc.seed
    t1 = time.perf_counter()
    tokenizer, tok_info = get_or_train_tokenizer(
        [r["text"] for r in records["train"]], vocab_size=dc.vocab_size, lowercase=dc.lowercase,
        cache_key=cache_key, cache_dir=default_cache_dir(dc.cache_dir) / "tokenizers",
        run_path=workdir_path / TOKENIZER_FILE if workdir_path is not None else None)
    t_tok = time.perf_counter() - t1

    t2 = time.perf_counter()
    datasets, oov, truncation, mean_labels, mean_tokens = {}, {}, {}, {}, {}
    for split in SPLITS:
        texts = [r["text"] for r in records[split]]
        label_lists = [r[spec.field] for r in records[split]]
        enc = encode_texts(tokenizer, texts, dc.max_length)
        labels = vocab.encode(label_lists)
        datasets[split] = ArrayDataset(enc.input_ids, labels, split)
        oov[split] = vocab.oov_stats(label_lists)
        truncation[split] = round(float(enc.truncated.mean()), 4) if len(texts) else 0.0
        mean_labels[split] = round(float(labels.sum(1).mean()), 4) if len(texts) else 0.0
        mean_tokens[split] = round(float(enc.mask.sum(1).mean()), 2) if len(texts) else 0.0
    t_enc = time.perf_counter() - t2

    train_pos = datasets["train"].labels.sum(0)
    info = {
        "dataset": desc["dataset"],
        "synthetic": desc["dataset"] == "synthetic",
        "source": desc["source"],
        "data_dir": desc["data_dir"],
        **({"hub_name": desc["hub_name"]} if "hub_name" in desc else {}),
        "label_set": vocab.label_set,
        "label_field": vocab.field,
        "num_labels": vocab.num_labels,
        "sizes": {s: len(datasets[s]) for s in SPLITS},
        "full_sizes": full_sizes,
        "seed": dc.seed,
        "max_length": dc.max_length,
        "vocab_size": tokenizer.get_vocab_size(),
        "lowercase": dc.lowercase,
        "tokenizer": tok_info,
        "oov": oov,
        "mean_labels_per_doc": mean_labels,
        "labels_without_train_positives": int((train_pos == 0).sum()),
        "truncation_rate": truncation,
        "mean_tokens_per_doc": mean_tokens,
        "seconds": {"read": round(t_read, 3), "tokenizer": round(t_tok, 3),
                    "encode": round(t_enc, 3), "total": round(time.perf_counter() - t0, 3)},
    }
    logging.info("Data: %s/%s, label_set=%s (%d labels), sizes=%s, truncation=%.3f, %.1f s.",
                 info["dataset"], info["source"], info["label_set"], info["num_labels"],
                 info["sizes"], truncation["train"], info["seconds"]["total"])
    if workdir_path is not None:
        if not (workdir_path / LABEL_VOCAB_FILE).is_file():
            vocab.save(workdir_path / LABEL_VOCAB_FILE)
        tmp = workdir_path / (DATA_INFO_FILE + ".tmp")
        tmp.write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, workdir_path / DATA_INFO_FILE)
    return DataBundle(train=datasets["train"], validation=datasets["validation"],
                      test=datasets["test"], vocab=vocab, tokenizer=tokenizer, info=info)
