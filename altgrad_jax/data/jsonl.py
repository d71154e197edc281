"""Reading and writing JSON-lines split files (``.jsonl`` or ``.jsonl.gz``).

One JSON object per line. Required: ``text`` (non-empty string). Labels: ``labels`` (list of
EuroVoc concept ids as strings); optional derived levels ``labels_level1`` / ``labels_level2``.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pathlib
from typing import Any, Iterable, Sequence

from altgrad_jax.data.errors import DataError

__all__ = ["LABEL_FIELDS", "read_jsonl", "write_jsonl"]

LABEL_FIELDS = ("labels", "labels_level1", "labels_level2")
_MAX_LISTED = 5


def _open_text(path: pathlib.Path, mode: str) -> io.TextIOBase:
    if path.name.endswith(".gz"):
        return gzip.open(path, mode + "t", encoding="utf-8")
    return open(path, mode, encoding="utf-8")


def _as_label_list(value: Any) -> list[str] | None:
    """Labels as a list of strings (ints are accepted and converted), or None if malformed."""
    if not isinstance(value, (list, tuple)):
        return None
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (str, int)):
            return None
        out.append(str(v))
    return out


def read_jsonl(
    path: str | os.PathLike,
    *,
    fields: Sequence[str] | None = None,
    label_fields: Sequence[str] = (),
    text_field: str = "text",
) -> list[dict[str, Any]]:
    """Reads a ``.jsonl`` or ``.jsonl.gz`` file and validates every record.

    Blank lines are skipped. Every record must be a JSON object with a non-empty string ``text``
    (or ``text_field``);
    each field in ``label_fields`` must be present and be a list of strings (integers are converted
    to strings).

    Args:
        path: the file; gzip is used when the name ends with ``.gz``.
        fields: keep only these keys of each record (always including ``text`` and
            ``label_fields``); None keeps everything. Saves memory on large splits.
        label_fields: label fields that every record must carry.
        text_field: the field holding the document text.

    Returns:
        The records, in file order.

    Raises:
        DataError: a line is not valid JSON or not an object (raised at the first such line, with
            ``file:line`` and the JSON error), or records lack a non-empty ``text`` or a valid label
            field (raised after the whole file is scanned, with the count and the first ``file:line``
            positions).
    """
    path = pathlib.Path(path)
    keep = None
    if fields is not None:
        keep = set(fields) | {text_field} | set(label_fields)
    records: list[dict[str, Any]] = []
    bad_text: list[int] = []
    bad_labels: dict[str, list[int]] = {f: [] for f in label_fields}
    try:
        with _open_text(path, "r") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(
                        f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno}). Each line "
                        "must be one JSON object; fix or remove this line (a truncated download "
                        "is a common cause: re-run python -m altgrad_jax.data.prepare).") from e
                if not isinstance(rec, dict):
                    raise DataError(
                        f"{path}:{lineno}: expected a JSON object per line, got "
                        f"{type(rec).__name__}. Fix: write one object with 'text' and 'labels' "
                        "per line.")
                text = rec.get(text_field)
                if not isinstance(text, str) or not text.strip():
                    bad_text.append(lineno)
                for f in label_fields:
                    labels = _as_label_list(rec.get(f))
                    if labels is None:
                        bad_labels[f].append(lineno)
                    else:
                        rec[f] = labels
                if keep is not None:
                    rec = {k: v for k, v in rec.items() if k in keep}
                records.append(rec)
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot be read ({e}). Fix: check the file is complete "
                        "(gzip files must not be truncated) and UTF-8 encoded.") from e
    if bad_text:
        where = ", ".join(f"{path}:{n}" for n in bad_text[:_MAX_LISTED])
        raise DataError(
            f"{len(bad_text)} record(s) in {path} have no non-empty {text_field!r} field (first at "
            f"{where}). Every record needs the document text; fix or remove these lines, or name "
            "the text field with data.text_field.")
    for f, lines in bad_labels.items():
        if lines:
            where = ", ".join(f"{path}:{n}" for n in lines[:_MAX_LISTED])
            raise DataError(
                f"{len(lines)} record(s) in {path} have no valid {f!r} field (a list of label id "
                f"strings; first at {where}). Fix these lines, or choose a label_set whose field "
                "the data has ('top100'/'all' use 'labels', 'level1' uses 'labels_level1', "
                "'level2' uses 'labels_level2'), or name the field with data.label_field.")
    return records


def write_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> pathlib.Path:
    """Writes records as JSON lines, gzip-compressed when ``path`` ends with ``.gz``.

    The file is written to a temporary name and renamed, so a crash never leaves a half file.

    Args:
        path: destination file.
        records: JSON-serializable dicts.

    Returns:
        The written path.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if path.name.endswith(".gz"):
        tmp = path.with_name(path.name[: -len(".gz")] + ".tmp.gz")
    with _open_text(tmp, "w") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False))
            fh.write("\n")
    os.replace(tmp, path)
    return path
