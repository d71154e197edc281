"""Where the data lives: the data directory and the split files inside it.

The data directory comes from (in order) an explicit argument (``config.data.data_dir``) or the
environment variable ``ALTGRAD_DATA_DIR``. It is never written into the code.
"""

from __future__ import annotations

import os
import pathlib

from altgrad_jax.data.errors import DataError

__all__ = [
        "DATA_DIR_ENV",
        "SPLITS",
        "resolve_data_dir",
        "require_data_dir",
        "find_split_file",
        "default_cache_dir",
]

DATA_DIR_ENV = "ALTGRAD_DATA_DIR"
CACHE_DIR_ENV = "ALTGRAD_CACHE_DIR"
SPLITS = ("train", "validation", "test")
_SUFFIXES = (".jsonl.gz", ".jsonl")

_HOW_TO_PROVIDE = (
        "Provide data in one of these ways:\n"
        f"  * set the environment variable {DATA_DIR_ENV}=/path/to/eurlex57k (the folder holding "
        "train.jsonl.gz, validation.jsonl.gz, test.jsonl.gz);\n"
        "  * pass --config.data.data_dir=/path/to/eurlex57k;\n"
        "  * download it from the Hugging Face hub: python -m altgrad_jax.data.prepare --out DIR, "
        f"then point {DATA_DIR_ENV} or --config.data.data_dir at DIR (or use --config.data.source=hub);\n"
        "  * or train on the generated synthetic corpus: --config.data.source=synthetic."
)


def resolve_data_dir(data_dir: str | os.PathLike | None = "") -> pathlib.Path | None:
    """Resolves the data directory without checking that it exists.

    Args:
        data_dir: explicit directory (e.g. ``config.data.data_dir``); empty or None means "not given".

    Returns:
        The explicit directory if given, else ``$ALTGRAD_DATA_DIR`` if set and non-empty, else None.
    """
    if data_dir:
        return pathlib.Path(data_dir).expanduser()
    env = os.environ.get(DATA_DIR_ENV, "")
    if env:
        return pathlib.Path(env).expanduser()
    return None


def require_data_dir(data_dir: str | os.PathLike | None = "") -> pathlib.Path:
    """Like `resolve_data_dir` but the directory must exist.

    Args:
        data_dir: explicit directory; empty or None means "use the environment variable".

    Returns:
        The existing data directory.

    Raises:
        FileNotFoundError: nothing resolved or the resolved directory does not exist; the message lists
            every place that was looked at and how to provide data.
    """
    looked = []
    if data_dir:
        looked.append(f"the explicit data_dir argument / config.data.data_dir = {str(data_dir)!r}")
    else:
        looked.append("the explicit data_dir argument / config.data.data_dir (empty)")
    env = os.environ.get(DATA_DIR_ENV, "")
    looked.append(f"the environment variable {DATA_DIR_ENV} = {env!r}" if env else
                                f"the environment variable {DATA_DIR_ENV} (not set)")
    path = resolve_data_dir(data_dir)
    if path is not None and path.is_dir():
        return path
    problem = ("No data directory was given." if path is None else
                          f"The data directory {str(path)!r} does not exist or is not a directory.")
    raise FileNotFoundError(
            f"{problem}\nLooked at:\n" + "\n".join(f"  - {x}" for x in looked) + "\n" + _HOW_TO_PROVIDE)


def find_split_file(data_dir: str | os.PathLike, split: str) -> pathlib.Path:
    """Finds ``<split>.jsonl.gz`` or ``<split>.jsonl`` in ``data_dir``.

    Args:
        data_dir: directory holding the split files.
        split: one of ``train``, ``validation``, ``test``.

    Returns:
        The path of the split file.

    Raises:
        DataError: the split file is missing, or both a ``.jsonl`` and a ``.jsonl.gz`` exist.
    """
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; valid splits: {', '.join(SPLITS)}.")
    data_dir = pathlib.Path(data_dir)
    found = [data_dir / f"{split}{s}" for s in _SUFFIXES if (data_dir / f"{split}{s}").is_file()]
    if not found:
        present = sorted(p.name for p in data_dir.iterdir()) if data_dir.is_dir() else []
        raise DataError(
                f"Split file for {split!r} not found in {str(data_dir)!r}: expected {split}.jsonl.gz or "
                f"{split}.jsonl (one JSON object per line with 'text' and 'labels'); the folder holds "
                f"{present[:20]}. Fix: put the split files there (python -m altgrad_jax.data.prepare "
                "--out DIR writes them) or point the data dir at the right folder.")
    if len(found) > 1:
        raise DataError(
                f"Both {found[0].name} and {found[1].name} exist in {str(data_dir)!r}; it is ambiguous "
                "which one to read. Fix: remove one of them.")
    return found[0]


def default_cache_dir(cache_dir: str | os.PathLike | None = "") -> pathlib.Path:
    """The cache root: explicit argument, else ``$ALTGRAD_CACHE_DIR``, else ``~/.cache/altgrad_jax``.

    Tokenizers are cached under ``<root>/tokenizers`` and hub downloads under ``<root>/hub``.
    """
    if cache_dir:
        return pathlib.Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_DIR_ENV, "")
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path("~/.cache/altgrad_jax").expanduser()
