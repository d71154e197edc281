"""Downloading EURLEX57K from the Hugging Face hub into the local JSONL layout.

The hub's ``NLP-AUEB/eurlex`` has splits ``train`` / ``validation`` (or ``dev``) / ``test`` with
fields ``celex_id``, ``title``, ``text`` and ``eurovoc_concepts``; other copies call the label
field ``labels`` (possibly as class indices with names). Records are written as
``{"text", "labels", ...}`` to ``<out>/{train,validation,test}.jsonl.gz``.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

from absl import logging

from altgrad_jax.data.errors import DataError
from altgrad_jax.data.jsonl import write_jsonl
from altgrad_jax.data.paths import SPLITS

__all__ = ["DEFAULT_HUB_NAME", "download_from_hub", "hub_split_files_present"]

DEFAULT_HUB_NAME = "NLP-AUEB/eurlex"
_SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "dev", "valid"),
                  "test": ("test",)}
_LABEL_FIELDS = ("labels", "eurovoc_concepts", "label")
_TEXT_FIELDS = ("text", "document", "content")
_KEEP_FIELDS = ("celex_id", "title", "type", "labels_level1", "labels_level2")


def hub_split_files_present(out_dir: str | os.PathLike) -> bool:
    """True if ``out_dir`` already holds all three ``<split>.jsonl.gz`` files."""
    out_dir = pathlib.Path(out_dir)
    return all((out_dir / f"{s}.jsonl.gz").is_file() for s in SPLITS)


def _label_names(features: Any, field: str):
    """Class names if ``field`` is a (sequence of) ClassLabel, else None."""
    feat = features.get(field) if features is not None else None
    for _ in range(3):
        if feat is None:
            return None
        if hasattr(feat, "names") and getattr(feat, "names", None):
            return list(feat.names)
        feat = getattr(feat, "feature", None)
        if isinstance(feat, list) and feat:  # datasets.Sequence as [ClassLabel]
            feat = feat[0]
    return None


def _convert_split(ds: Any, split: str, hub_name: str) -> list[dict[str, Any]]:
    columns = list(ds.column_names)
    text_field = next((f for f in _TEXT_FIELDS if f in columns), None)
    label_field = next((f for f in _LABEL_FIELDS if f in columns), None)
    if text_field is None or label_field is None:
        raise DataError(
            f"Hub dataset {hub_name!r} split {split!r} has columns {columns}; expected a text "
            f"column (one of {_TEXT_FIELDS}) and a label column (one of {_LABEL_FIELDS}). Fix: "
            "pass --hub_name of an EURLEX57K copy (default NLP-AUEB/eurlex).")
    names = _label_names(getattr(ds, "features", None), label_field)
    records = []
    for i, row in enumerate(ds):
        raw = row[label_field]
        if raw is None:
            raw = []
        if not isinstance(raw, (list, tuple)):
            raw = [raw]
        labels = [names[v] if names is not None and isinstance(v, int) else str(v) for v in raw]
        text = row[text_field]
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"Hub dataset {hub_name!r} split {split!r} row {i} has no text.")
        rec = {"text": text, "labels": labels, "split": split}
        rec.update({k: row[k] for k in _KEEP_FIELDS if k in row})
        records.append(rec)
    return records


def download_from_hub(
    out_dir: str | os.PathLike,
    hub_name: str = DEFAULT_HUB_NAME,
    *,
    overwrite: bool = False,
    **load_kwargs: Any,
) -> pathlib.Path:
    """Downloads a dataset with ``datasets.load_dataset`` and writes the local JSONL layout.

    Args:
        out_dir: folder to write ``train/validation/test.jsonl.gz`` and ``source.json`` into.
        hub_name: hub dataset name.
        overwrite: re-download even if the split files exist.
        **load_kwargs: passed to ``datasets.load_dataset`` (e.g. ``revision``).

    Returns:
        ``out_dir`` as a path.

    Raises:
        DataError: the download failed (offline, unknown name) or lacks a split or field.
    """
    out_dir = pathlib.Path(out_dir).expanduser()
    if hub_split_files_present(out_dir) and not overwrite:
        logging.info("Hub data already present in %s; not downloading.", out_dir)
        return out_dir
    import datasets  # Heavy import; only when downloading.

    logging.info("Downloading %s from the Hugging Face hub.", hub_name)
    try:
        dsd = datasets.load_dataset(hub_name, **load_kwargs)
    except Exception as e:  # datasets raises many types (ConnectionError, FileNotFoundError...).
        raise DataError(
            f"Could not load {hub_name!r} from the Hugging Face hub ({type(e).__name__}: {e}). "
            "Fix: check the name and the network (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE must be "
            "unset), or provide local files via ALTGRAD_DATA_DIR / --config.data.data_dir, or use "
            "--config.data.source=synthetic.") from e
    available = list(dsd.keys())
    counts = {}
    for split in SPLITS:
        hub_split = next((a for a in _SPLIT_ALIASES[split] if a in available), None)
        if hub_split is None:
            raise DataError(f"Hub dataset {hub_name!r} has splits {available}; none of "
                            f"{_SPLIT_ALIASES[split]} for {split!r}. Fix: use an EURLEX57K copy "
                            "with train/validation(dev)/test splits.")
        records = _convert_split(dsd[hub_split], split, hub_name)
        write_jsonl(out_dir / f"{split}.jsonl.gz", records)
        counts[split] = len(records)
        logging.info("Wrote %d %s records to %s.", len(records), split, out_dir)
    (out_dir / "source.json").write_text(
        json.dumps({"hub_name": hub_name, "load_kwargs": {k: str(v) for k, v in load_kwargs.items()},
                    "sizes": counts}, indent=1) + "\n", encoding="utf-8")
    return out_dir
