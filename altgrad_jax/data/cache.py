"""A cache that parallel runs can share: a file lock per entry and atomic, checksummed files.

Two runs started at once on one machine (a sweep) must not both build the same entry (the
tokenizer takes ~46 s on EURLEX57K) nor read a half-written file. Every entry is built under an
exclusive ``fcntl.flock`` on ``<entry>.lock``: the first process builds and writes, the others
block, then find the finished file and load it. Files are written to a temporary name in the same
folder and renamed with ``os.replace`` (atomic on POSIX), so a crash leaves either the old file or
none. A `save_arrays` file also carries the SHA-256 of its arrays and its key, so a corrupted or
truncated file (or one from another key) is detected on load and rebuilt.

Example:
    >>> import tempfile, numpy as np
    >>> d = tempfile.mkdtemp()
    >>> with entry_lock(d + "/x.npz"):
    ...     _ = save_arrays(d + "/x.npz", {"a": np.arange(3)}, key={"k": 1})
    >>> load_arrays(d + "/x.npz", key={"k": 1})["a"].tolist()
    [0, 1, 2]
    >>> load_arrays(d + "/x.npz", key={"k": 2}) is None
    True
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pathlib
import tempfile
import zipfile
from typing import Any, Iterator, Mapping

import numpy as np
from absl import logging

__all__ = ["digest", "entry_lock", "atomic_write_text", "save_arrays", "load_arrays"]

_META = "__meta__"


def digest(obj: Any, length: int = 16) -> str:
    """A stable hex digest (SHA-256) of a JSON-serializable object; never Python's ``hash()``."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:length]


@contextlib.contextmanager
def entry_lock(path: str | os.PathLike) -> Iterator[None]:
    """Holds an exclusive lock on ``<path>.lock`` (blocks until other holders release it).

    ``flock`` locks are released by the kernel when the holder exits, so a crashed run never leaves
    a stale lock behind.
    """
    lock = pathlib.Path(f"{os.fspath(path)}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _replace_from_temp(path: pathlib.Path, write) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> pathlib.Path:
    """Writes ``text`` to ``path`` through a temporary file and an atomic rename."""
    return _replace_from_temp(pathlib.Path(path),
                              lambda tmp: pathlib.Path(tmp).write_text(text, encoding="utf-8"))


def _arrays_digest(arrays: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_arrays(path: str | os.PathLike, arrays: Mapping[str, np.ndarray], *,
                key: Mapping[str, Any], meta: Mapping[str, Any] | None = None) -> pathlib.Path:
    """Writes arrays (uncompressed ``.npz``) with their key, a JSON ``meta`` and a checksum.

    Args:
        path: destination ``.npz``.
        arrays: name -> array (no object arrays).
        key: what the arrays are a function of; `load_arrays` returns None for another key.
        meta: extra JSON-serializable data returned by `load_arrays` under ``"__meta__"``.
    """
    header = {"key": digest(dict(key), 64), "sha256": _arrays_digest(arrays), "meta": meta or {}}
    payload = dict(arrays)
    payload[_META] = np.frombuffer(json.dumps(header, default=str).encode("utf-8"), np.uint8)

    def write(tmp):
        with open(tmp, "wb") as fh:
            np.savez(fh, **payload)
    return _replace_from_temp(pathlib.Path(path), write)


def load_arrays(path: str | os.PathLike, *, key: Mapping[str, Any]) -> dict[str, Any] | None:
    """Reads a `save_arrays` file; None when missing, corrupted, truncated or for another key.

    Returns:
        name -> array, plus ``"__meta__"`` -> the ``meta`` mapping it was saved with.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {name: z[name] for name in z.files}
        header = json.loads(out.pop(_META).tobytes().decode("utf-8"))
        if header["key"] != digest(dict(key), 64):
            logging.warning("Cache file %s was written for another key; rebuilding it.", path)
            return None
        if header["sha256"] != _arrays_digest(out):
            raise ValueError("checksum mismatch")
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        logging.warning("Cache file %s is corrupted or incomplete (%s); rebuilding it.", path, e)
        return None
    out[_META] = header["meta"]
    return out
