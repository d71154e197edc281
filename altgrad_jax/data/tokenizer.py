"""WordPiece tokenizer: training, caching, loading and batch encoding.

The tokenizer is a BERT-style WordPiece trained with the Hugging Face ``tokenizers`` library
(``BertNormalizer`` with optional lowercasing, ``BertPreTokenizer``, ``WordPiece`` model) with the
special tokens ``[PAD]=0``, ``[UNK]=1``, ``[CLS]=2``, ``[SEP]=3``. Documents are encoded as
``[CLS] + tokens``, truncated to ``max_length`` and right-padded with ``[PAD]`` (id 0), so the
attention mask is ``input_ids != PAD_ID``.

WordPiece training is NOT reproducible across processes: ``tokenizers`` breaks ties between
equally frequent merges in Rust ``HashMap`` order, so the same texts give another vocabulary (and
other ids) in each new process. The cache makes the runs of one machine share one tokenizer; runs
that must be comparable across machines pin a saved file (`load_tokenizer_file`,
``data.tokenizer_file``). `tokenizer_sha256` identifies the tokenizer a run used.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import time
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np
from absl import logging
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import trainers

from altgrad_jax.data.cache import atomic_write_text, entry_lock
from altgrad_jax.data.errors import DataError

__all__ = [
    "PAD_ID",
    "SPECIAL_TOKENS",
    "Encoded",
    "train_tokenizer",
    "load_tokenizer",
    "save_tokenizer",
    "fingerprint",
    "get_or_train_tokenizer",
    "load_tokenizer_file",
    "tokenizer_sha256",
    "encode_texts",
]

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
PAD_ID = 0
UNK_ID = 1
CLS_ID = 2
SEP_ID = 3


class Encoded(NamedTuple):
    """Encoded documents.

    Attributes:
        input_ids: ``int32 [N, max_length]``, ``[CLS]`` first, padded with ``PAD_ID``.
        mask: ``bool [N, max_length]``, True on real tokens (``input_ids != PAD_ID``).
        truncated: ``bool [N]``, True where the document did not fit in ``max_length``.
    """

    input_ids: np.ndarray
    mask: np.ndarray
    truncated: np.ndarray


def train_tokenizer(
    texts: Sequence[str],
    *,
    vocab_size: int,
    lowercase: bool = True,
    limit_alphabet: int = 1000,
    min_frequency: int = 2,
) -> Tokenizer:
    """Trains a WordPiece tokenizer on ``texts``.

    Args:
        texts: training documents (the train split only).
        vocab_size: target vocabulary size, special tokens included.
        lowercase: lowercase (and strip accents) in the normalizer.
        limit_alphabet: most characters kept in the initial alphabet (drops rare mojibake).
        min_frequency: least count for a merge.

    Returns:
        The trained tokenizer, with the ``[CLS] $A`` post-processor; no truncation or padding set.

    Raises:
        ValueError: ``vocab_size`` too small or no texts.
    """
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens, got "
                         f"{vocab_size}.")
    if len(texts) == 0:
        raise ValueError("Cannot train a tokenizer on zero texts; the train split is empty.")
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS),
        limit_alphabet=limit_alphabet, continuing_subword_prefix="##", show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    for token, want in zip(SPECIAL_TOKENS, (PAD_ID, UNK_ID, CLS_ID, SEP_ID)):
        if tok.token_to_id(token) != want:
            raise RuntimeError(f"Special token {token} got id {tok.token_to_id(token)}, "
                               f"expected {want}.")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A", special_tokens=[("[CLS]", CLS_ID)])
    return tok


def save_tokenizer(tok: Tokenizer, path: str | os.PathLike) -> pathlib.Path:
    """Writes ``tokenizer.json`` atomically."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tok.save(str(tmp))
    os.replace(tmp, path)
    return path


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Loads a tokenizer written by `save_tokenizer` and checks its special tokens."""
    path = pathlib.Path(path)
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on bad JSON.
        raise DataError(f"{path}: cannot load tokenizer ({e}). Fix: delete the file so it is "
                        "retrained.") from e
    if tok.token_to_id("[PAD]") != PAD_ID or tok.token_to_id("[CLS]") != CLS_ID:
        raise DataError(f"{path}: tokenizer must have [PAD]=0 and [CLS]=2 (got "
                        f"{tok.token_to_id('[PAD]')}, {tok.token_to_id('[CLS]')}). Fix: delete "
                        "it so it is retrained.")
    return tok


def tokenizer_sha256(tok: Tokenizer) -> str:
    """SHA-256 (hex) of the tokenizer's canonical JSON (``Tokenizer.to_str()``).

    Stable across a save/load round trip, so a pinned file and the run folder's copy of it give
    the same digest (the file's own bytes may differ: ``save`` pretty-prints).
    """
    return hashlib.sha256(tok.to_str().encode("utf-8")).hexdigest()


def load_tokenizer_file(
    path: str | os.PathLike, *, run_path: str | os.PathLike | None = None
) -> tuple[Tokenizer, dict[str, Any]]:
    """Loads a pinned tokenizer (``data.tokenizer_file``) instead of training one.

    A relative ``path`` resolves against the current directory. The tokenizer is copied to
    ``run_path`` (the run folder's ``tokenizer.json``); a run folder that already holds another
    tokenizer (a resume with a changed pin) is an error, so a run never mixes two id maps.

    Args:
        path: a tokenizer JSON written by `save_tokenizer` (or ``Tokenizer.save``).
        run_path: the run folder's ``tokenizer.json``; None for no run folder.

    Returns:
        ``(tokenizer, info)``; info has ``origin="file"``, ``file`` (the resolved path),
        ``file_sha256`` (of the file's bytes), ``vocab_size`` and ``seconds``.

    Raises:
        ValueError: the file is missing, unreadable, not a tokenizer with ``[PAD]=0``/``[CLS]=2``,
            or differs from the run folder's tokenizer.
    """
    start = time.perf_counter()
    resolved = pathlib.Path(path).expanduser().absolute()
    try:
        blob = resolved.read_bytes()
        tok = load_tokenizer(resolved)
    except (OSError, DataError) as e:
        why = (str(e).splitlines() or [type(e).__name__])[0]
        raise ValueError(f"data.tokenizer_file={os.fspath(path)!r} cannot be used ({why}). Fix: "
                         "give the path of a saved tokenizer JSON (relative to the current "
                         "directory) or set data.tokenizer_file='' to train one.") from None
    if run_path is not None and pathlib.Path(run_path).is_file():
        if tokenizer_sha256(load_tokenizer(run_path)) != tokenizer_sha256(tok):
            raise ValueError(f"data.tokenizer_file={os.fspath(path)!r} differs from the run "
                             f"folder's {os.fspath(run_path)!r}. Fix: use a new workdir, or pin "
                             "the tokenizer the run started with.")
    elif run_path is not None:
        save_tokenizer(tok, run_path)
    seconds = time.perf_counter() - start
    logging.info("Tokenizer loaded from %s (vocab %d).", resolved, tok.get_vocab_size())
    return tok, {"origin": "file", "file": str(resolved),
                 "file_sha256": hashlib.sha256(blob).hexdigest(),
                 "vocab_size": tok.get_vocab_size(), "seconds": round(seconds, 3)}


def fingerprint(key: Mapping[str, Any]) -> str:
    """A short stable hash of a JSON-serializable mapping (the tokenizer cache key)."""
    blob = json.dumps(dict(key), sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


def get_or_train_tokenizer(
    texts: Sequence[str] | Callable[[], Sequence[str]],
    *,
    vocab_size: int,
    lowercase: bool,
    cache_key: Mapping[str, Any],
    cache_dir: str | os.PathLike | None,
    run_path: str | os.PathLike | None = None,
) -> tuple[Tokenizer, dict[str, Any]]:
    """Returns the run's tokenizer, loading before training; safe for parallel runs.

    Order: ``run_path`` if that file exists (resume and evaluation reuse the run's tokenizer), else
    ``<cache_dir>/<fingerprint>/tokenizer.json``, else train on ``texts`` and store in the cache.
    The cache look-up and the training run under an exclusive file lock
    (`altgrad_jax.data.cache.entry_lock`), so of several runs started at once exactly one trains
    and the others wait and load its file; files are written atomically, and a cached file that
    cannot be loaded is retrained. The result is always written to ``run_path`` when given.

    Args:
        texts: train texts, or a zero-argument callable returning them (only called when training,
            so a cache hit needs no data read).
        vocab_size: vocabulary size.
        lowercase: lowercasing in the normalizer.
        cache_key: everything that determines the training texts (data identity, subset, seed);
            ``vocab_size`` and ``lowercase`` are added to it.
        cache_dir: tokenizer cache folder; None disables caching.
        run_path: the run folder's ``tokenizer.json``; None for no run folder.

    Returns:
        ``(tokenizer, info)``; info has ``origin`` (``run``, ``cache`` or ``trained``),
        ``fingerprint``, ``vocab_size`` and ``seconds``.
    """
    start = time.perf_counter()
    key = dict(cache_key, vocab_size=int(vocab_size), lowercase=bool(lowercase), kind="wordpiece")
    fp = fingerprint(key)
    cache_file = pathlib.Path(cache_dir) / fp / "tokenizer.json" if cache_dir else None
    if run_path is not None and pathlib.Path(run_path).is_file():
        tok, origin = load_tokenizer(run_path), "run"
        if tok.get_vocab_size() != vocab_size:
            logging.warning("The run folder's tokenizer has %d tokens but vocab_size=%d; using the "
                            "run's tokenizer so the run stays consistent.",
                            tok.get_vocab_size(), vocab_size)
    elif cache_file is None:
        tok, origin = _train(texts, vocab_size, lowercase), "trained"
    else:
        with entry_lock(cache_file):
            tok, origin = _load_cached(cache_file), "cache"
            if tok is None:
                tok, origin = _train(texts, vocab_size, lowercase), "trained"
                save_tokenizer(tok, cache_file)
                atomic_write_text(cache_file.parent / "key.json",
                                  json.dumps(key, indent=1, default=str))
    if run_path is not None and origin != "run":
        save_tokenizer(tok, run_path)
    seconds = time.perf_counter() - start
    logging.info("Tokenizer %s (%s, vocab %d) in %.1f s.", fp, origin, tok.get_vocab_size(), seconds)
    return tok, {"origin": origin, "fingerprint": fp, "vocab_size": tok.get_vocab_size(),
                 "seconds": round(seconds, 3)}


def _load_cached(cache_file: pathlib.Path) -> Tokenizer | None:
    """The cached tokenizer, or None if missing or unreadable (then it is retrained)."""
    if not cache_file.is_file():
        return None
    try:
        return load_tokenizer(cache_file)
    except DataError as e:
        logging.warning("Cached tokenizer is unusable, retraining it: %s", e)
        return None


def _train(texts, vocab_size: int, lowercase: bool) -> Tokenizer:
    texts = texts() if callable(texts) else texts
    logging.info("Training a WordPiece tokenizer (vocab %d) on %d texts.", vocab_size, len(texts))
    return train_tokenizer(texts, vocab_size=vocab_size, lowercase=lowercase)


def _cut_at_whitespace(text: str, max_chars: int) -> tuple[str, bool]:
    """The longest prefix of at most ``max_chars`` characters that ends before a whitespace."""
    if len(text) <= max_chars:
        return text, False
    cut = max(text.rfind(c, 0, max_chars + 1) for c in (" ", "\n", "\t"))
    if cut <= 0:
        return text, False
    return text[:cut], True


def encode_texts(
    tok: Tokenizer, texts: Sequence[str], max_length: int, *, chars_per_token: int = 6
) -> Encoded:
    """Encodes documents as ``[CLS] + tokens``, truncated and padded to ``max_length``.

    Uses the library's parallel batch encoder (``TOKENIZERS_PARALLELISM`` controls threads). For
    speed, long documents are first cut at a whitespace after about ``max_length * chars_per_token``
    characters; cutting at whitespace leaves the leading tokens unchanged (the BERT normalizer and
    pre-tokenizer act within words), and a cut document that yields fewer than ``max_length``
    tokens is re-encoded whole, so the result equals encoding the full texts.

    Args:
        tok: a tokenizer from this module (``[CLS]`` post-processor, ``[PAD]`` = 0).
        texts: documents.
        max_length: output length, ``[CLS]`` included.
        chars_per_token: character budget per token for the pre-cut (speed only).

    Returns:
        `Encoded` arrays.

    Raises:
        ValueError: ``max_length < 2``.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 ([CLS] plus one token), got {max_length}.")
    tok = Tokenizer.from_str(tok.to_str())  # Leave the caller's truncation/padding alone.
    tok.no_truncation()
    tok.no_padding()
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    n = len(texts)
    input_ids = np.zeros((n, max_length), dtype=np.int32)
    truncated = np.zeros((n,), dtype=bool)
    max_chars = max_length * chars_per_token
    chunk = 4096
    for start in range(0, n, chunk):
        batch = [_cut_at_whitespace(t, max_chars) for t in texts[start:start + chunk]]
        encs = encode([t for t, _ in batch])
        redo = []
        for j, (enc, (_, was_cut)) in enumerate(zip(encs, batch)):
            ids = enc.ids
            if len(ids) > max_length or (was_cut and len(ids) == max_length):
                truncated[start + j] = True
            elif was_cut:
                redo.append(j)
                continue
            ids = ids[:max_length]
            input_ids[start + j, :len(ids)] = ids
        if redo:
            for j, enc in zip(redo, encode([texts[start + j] for j in redo])):
                ids = enc.ids
                truncated[start + j] = len(ids) > max_length
                ids = ids[:max_length]
                input_ids[start + j, :len(ids)] = ids
    return Encoded(input_ids=input_ids, mask=input_ids != PAD_ID, truncated=truncated)
