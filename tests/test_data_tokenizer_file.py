"""data.tokenizer_file: a pinned tokenizer is used exactly, recorded by SHA-256, and keys the cache.

Also: the synthetic-data warning reaches the terminal once per build (not once per channel).
"""

import hashlib
import json
import logging
import pathlib
import warnings

import ml_collections
import numpy as np
import pytest
from tokenizers import Tokenizer

from altgrad_jax.data import DataConfig, SyntheticDataWarning, build_data, write_jsonl
from altgrad_jax.data.tokenizer import save_tokenizer, train_tokenizer

SMOKE_TOKENIZER = pathlib.Path(__file__).resolve().parent / "data" / "smoke_tokenizer.json"
WORDS = ["tariff", "fruit", "council", "import", "fishery", "vessel", "aid", "wine", "customs"]


def _docs(n, split, offset=0):
    return [{"text": f"doc {offset + i} " + " ".join(WORDS[(i * 7 + k) % 9] for k in range(i % 11 + 2)),
             "labels": [str(100 + i % 3)], "split": split} for i in range(n)]


@pytest.fixture()
def jsonl_dir(tmp_path, monkeypatch):
    d = tmp_path / "corpus"
    docs = {"train": _docs(40, "train"), "validation": _docs(10, "validation", 500),
            "test": _docs(10, "test", 900)}
    for split, recs in docs.items():
        write_jsonl(d / f"{split}.jsonl", recs)
    monkeypatch.setenv("ALTGRAD_DATA_DIR", str(d))
    return docs


def _cfg(tmp_path, **kw):
    base = dict(DataConfig().__dict__, source="jsonl", vocab_size=120, max_length=12,
                label_set="all", cache_dir=str(tmp_path / "cache"))
    base.update(kw)
    return ml_collections.ConfigDict(base)


def _reference_ids(path, texts, max_length):
    """Independent reference: the library's own encoder on the file, truncated and zero-padded."""
    tok = Tokenizer.from_file(str(path))
    out = np.zeros((len(texts), max_length), np.int32)
    for i, text in enumerate(texts):
        ids = tok.encode(text).ids[:max_length]
        out[i, :len(ids)] = ids
    return out


def test_pinned_file_is_used_exactly_and_recorded(tmp_path, jsonl_dir, monkeypatch):
    monkeypatch.chdir(SMOKE_TOKENIZER.parent)  # a relative path resolves against the cwd
    wd = tmp_path / "run"
    b = build_data(_cfg(tmp_path, tokenizer_file=SMOKE_TOKENIZER.name), str(wd))
    for split in ("train", "validation", "test"):
        want = _reference_ids(SMOKE_TOKENIZER, [r["text"] for r in jsonl_dir[split]], 12)
        np.testing.assert_array_equal(getattr(b, split).input_ids, want)
    assert b.tokenizer.get_vocab_size() == Tokenizer.from_file(str(SMOKE_TOKENIZER)).get_vocab_size()
    info = json.loads((wd / "data_info.json").read_text())
    canonical = Tokenizer.from_file(str(SMOKE_TOKENIZER)).to_str().encode("utf-8")
    assert info["tokenizer_sha256"] == hashlib.sha256(canonical).hexdigest()
    assert info["tokenizer"]["origin"] == "file"
    assert info["tokenizer"]["file"] == str(SMOKE_TOKENIZER)
    assert info["tokenizer"]["file_sha256"] == hashlib.sha256(SMOKE_TOKENIZER.read_bytes()).hexdigest()
    assert Tokenizer.from_file(str(wd / "tokenizer.json")).to_str() == canonical.decode("utf-8")
    # Resume of the same run with the same pin: same ids.
    again = build_data(_cfg(tmp_path, tokenizer_file=str(SMOKE_TOKENIZER)), str(wd))
    np.testing.assert_array_equal(again.train.input_ids, b.train.input_ids)


def test_trained_tokenizer_sha256_is_recorded_too(tmp_path, jsonl_dir):
    wd = tmp_path / "run"
    b = build_data(_cfg(tmp_path), str(wd))
    info = json.loads((wd / "data_info.json").read_text())
    assert info["tokenizer"]["origin"] == "trained"
    saved = Tokenizer.from_file(str(wd / "tokenizer.json")).to_str().encode("utf-8")
    assert info["tokenizer_sha256"] == hashlib.sha256(saved).hexdigest()
    assert b.info["tokenizer_sha256"] == info["tokenizer_sha256"]


def test_pinned_tokenizer_is_part_of_the_encoded_cache_key(tmp_path, jsonl_dir):
    other = tmp_path / "other_tokenizer.json"
    save_tokenizer(train_tokenizer([r["text"] for r in jsonl_dir["train"]], vocab_size=60), other)
    a = build_data(_cfg(tmp_path, tokenizer_file=str(SMOKE_TOKENIZER)))
    o = build_data(_cfg(tmp_path, tokenizer_file=str(other)))
    a2 = build_data(_cfg(tmp_path, tokenizer_file=str(SMOKE_TOKENIZER)))
    assert (a.info["encoded_cache"], o.info["encoded_cache"], a2.info["encoded_cache"]) == (
        "built", "built", "hit")
    assert a.info["tokenizer_sha256"] != o.info["tokenizer_sha256"]
    np.testing.assert_array_equal(o.train.input_ids,
                                  _reference_ids(other, [r["text"] for r in jsonl_dir["train"]], 12))
    np.testing.assert_array_equal(a2.train.input_ids, a.train.input_ids)


@pytest.mark.parametrize("content", [None, "{not json", '{"version": "1.0"}'])
def test_bad_tokenizer_file_is_a_one_line_error(tmp_path, jsonl_dir, content):
    path = tmp_path / "tok.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=r"data\.tokenizer_file") as e:
        build_data(_cfg(tmp_path, tokenizer_file=str(path)))
    assert "\n" not in str(e.value) and "Fix:" in str(e.value)


def test_changed_pin_on_resume_is_an_error(tmp_path, jsonl_dir):
    wd = tmp_path / "run"
    build_data(_cfg(tmp_path), str(wd))  # the run folder now holds a trained tokenizer
    with pytest.raises(ValueError, match=r"data\.tokenizer_file.*differs from the run folder"):
        build_data(_cfg(tmp_path, tokenizer_file=str(SMOKE_TOKENIZER)), str(wd))


def test_synthetic_warning_is_printed_once(tmp_path, caplog):
    cfg = _cfg(tmp_path, source="synthetic", synthetic_num_train=20, synthetic_num_validation=4,
               synthetic_num_test=4, synthetic_num_labels=3, label_set="top100",
               tokenizer_file=str(SMOKE_TOKENIZER))
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        build_data(cfg, str(tmp_path / "run"))
    synthetic = [w for w in caught if issubclass(w.category, SyntheticDataWarning)]
    assert len(synthetic) == 1 and "USING SYNTHETIC DATA" in str(synthetic[0].message)
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING and "SYNTHETIC" in r.getMessage()]
    assert loud == []  # the terminal keeps WARNING+: the warning above is its only copy
    assert any("SYNTHETIC" in r.getMessage() for r in caplog.records)  # log.txt keeps the banner
