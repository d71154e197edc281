"""Data cache: parallel runs train the tokenizer once, encoded splits are cached, bad files rebuilt."""

import hashlib
import json
import os
import pathlib
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest

from altgrad_jax.data import DataConfig, build_data, load_tokenizer, write_jsonl
from altgrad_jax.data import cache as cache_lib
from altgrad_jax.data import records as records_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORDS = ["tariff", "fruit", "council", "import", "fishery", "vessel", "aid", "wine", "quota", "milk"]


def _docs(n, offset=0):
    return [{"text": f"doc {offset + i} " + " ".join(WORDS[(i * 7 + k) % 10] for k in range(i % 9 + 3)),
             "labels": [str(100 + i % 4), str(200 + i % 3)]} for i in range(n)]


@pytest.fixture()
def corpus(tmp_path):
    d = tmp_path / "corpus"
    write_jsonl(d / "train.jsonl", _docs(80))
    write_jsonl(d / "validation.jsonl", _docs(20, 1000))
    write_jsonl(d / "test.jsonl", _docs(20, 2000))
    return d


def _cfg(tmp_path, corpus, **kw):
    base = dict(DataConfig().__dict__, source="jsonl", data_dir=str(corpus), vocab_size=120,
                max_length=12, label_set="all", cache_dir=str(tmp_path / "cache"))
    base.update(kw)
    return ml_collections.ConfigDict(base)


def _arrays_digest(bundle):
    h = hashlib.sha256()
    for ds in (bundle.train, bundle.validation, bundle.test):
        h.update(ds.input_ids.tobytes())
        h.update(ds.labels.tobytes())
    return h.hexdigest()


_CHILD = r"""
import json, pathlib, sys, time
sys.path.insert(0, sys.argv[1])
import altgrad_jax.data.tokenizer as tok_lib
from altgrad_jax.data import build_data
cfg, marker, ready, go, out = (json.loads(sys.argv[2]),) + tuple(map(pathlib.Path, sys.argv[3:7]))
real_train = tok_lib.train_tokenizer
def counted_train(*a, **k):  # count trainings; widen the race window
    with open(marker, "a") as fh:
        fh.write("trained\n")
    time.sleep(1.0)
    return real_train(*a, **k)
tok_lib.train_tokenizer = counted_train
ready.touch()
while not go.exists():
    time.sleep(0.01)
b = build_data(cfg, sys.argv[7])
import hashlib
h = hashlib.sha256()
for ds in (b.train, b.validation, b.test):
    h.update(ds.input_ids.tobytes()); h.update(ds.labels.tobytes())
out.write_text(json.dumps({"origin": b.info["tokenizer"]["origin"], "encoded": b.info["encoded_cache"],
                           "digest": h.hexdigest(), "tok": b.tokenizer.to_str()}))
"""


def test_two_parallel_builds_train_the_tokenizer_once(tmp_path, corpus):
    cfg = json.dumps(_cfg(tmp_path, corpus).to_dict())
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    marker, go = tmp_path / "marker.txt", tmp_path / "go"
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    procs = []
    for i in range(2):
        args = [sys.executable, str(script), str(ROOT), cfg, str(marker), str(tmp_path / f"ready{i}"),
                str(go), str(tmp_path / f"out{i}.json"), str(tmp_path / f"run{i}")]
        procs.append(subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True))
    deadline = time.time() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
        assert time.time() < deadline and all(p.poll() is None for p in procs), \
            [p.stderr.read() for p in procs if p.poll() is not None]
        time.sleep(0.05)
    go.touch()  # both start building at the same moment
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-3000:]
    outs = [json.loads((tmp_path / f"out{i}.json").read_text()) for i in range(2)]
    assert marker.read_text().count("trained") == 1  # the other process waited and reused it
    assert sorted(o["origin"] for o in outs) == ["cache", "trained"]
    assert sorted(o["encoded"] for o in outs) == ["built", "hit"]
    assert outs[0]["digest"] == outs[1]["digest"] and outs[0]["tok"] == outs[1]["tok"]
    # Both run folders hold the same tokenizer; the cache holds no temporary leftovers.
    assert (tmp_path / "run0/tokenizer.json").read_text() == (tmp_path / "run1/tokenizer.json").read_text()
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_encoded_cache_hit_needs_no_data_read(tmp_path, corpus, monkeypatch):
    b1 = build_data(_cfg(tmp_path, corpus))
    assert b1.info["tokenizer"]["origin"] == "trained" and b1.info["encoded_cache"] == "built"

    def no_read(*a, **k):
        raise AssertionError("the JSONL files were read on a warm cache")
    monkeypatch.setattr(records_lib, "read_jsonl", no_read)
    b2 = build_data(_cfg(tmp_path, corpus))
    assert b2.info["tokenizer"]["origin"] == "cache" and b2.info["encoded_cache"] == "hit"
    assert _arrays_digest(b2) == _arrays_digest(b1)
    assert b2.vocab == b1.vocab and b2.info["oov"] == b1.info["oov"]
    for key in ("sizes", "full_sizes", "truncation_rate", "mean_labels_per_doc",
                "mean_tokens_per_doc", "labels_without_train_positives"):
        assert b2.info[key] == b1.info[key], key
    # Reference: the arrays equal a fresh encoding with the same (cached) tokenizer.
    monkeypatch.undo()
    b0 = build_data(_cfg(tmp_path, corpus, cache_encoded=False))
    assert b0.info["encoded_cache"] == "off" and _arrays_digest(b0) == _arrays_digest(b1)


def test_encoded_cache_key_follows_what_determines_the_arrays(tmp_path, corpus):
    base = build_data(_cfg(tmp_path, corpus))
    assert build_data(_cfg(tmp_path, corpus, max_length=10)).info["encoded_cache"] == "built"
    assert build_data(_cfg(tmp_path, corpus, max_test_docs=5)).info["encoded_cache"] == "built"
    assert build_data(_cfg(tmp_path, corpus, label_set="top100")).info["encoded_cache"] == "built"
    # A changed data file (same name, new content) is a new entry, for tokenizer and arrays.
    write_jsonl(corpus / "test.jsonl", _docs(21, 3000))
    b = build_data(_cfg(tmp_path, corpus))
    assert b.info["encoded_cache"] == "built" and b.info["sizes"]["test"] == 21
    assert not np.array_equal(b.test.input_ids[:20], base.test.input_ids)


def _encoded_files(tmp_path):
    return sorted((tmp_path / "cache" / "encoded").glob("*.npz"))


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "garbage"])
def test_corrupted_encoded_cache_is_detected_and_rebuilt(tmp_path, corpus, damage):
    ref = build_data(_cfg(tmp_path, corpus))
    (path,) = _encoded_files(tmp_path)
    blob = bytearray(path.read_bytes())
    if damage == "truncate":
        blob = blob[: len(blob) // 2]
    elif damage == "flip_byte":
        i = blob.index(b"\x93NUMPY") + 200  # inside the first array's data
        blob[i] ^= 0xFF
    else:
        blob = bytearray(b"not a zip file")
    path.write_bytes(bytes(blob))
    b = build_data(_cfg(tmp_path, corpus))
    assert b.info["encoded_cache"] == "built"
    assert _arrays_digest(b) == _arrays_digest(ref)
    assert build_data(_cfg(tmp_path, corpus)).info["encoded_cache"] == "hit"


def test_corrupted_tokenizer_cache_is_retrained(tmp_path, corpus):
    ref = build_data(_cfg(tmp_path, corpus))
    (tok_file,) = (tmp_path / "cache" / "tokenizers").glob("*/tokenizer.json")
    tok_file.write_text(tok_file.read_text()[:100])  # a partial file
    b = build_data(_cfg(tmp_path, corpus))
    assert b.info["tokenizer"]["origin"] == "trained"
    # (WordPiece training is not bit-reproducible across trainings, so compare the vocabularies'
    # sizes and the rewritten file, not the token ids.)
    assert b.tokenizer.get_vocab_size() == ref.tokenizer.get_vocab_size()
    assert load_tokenizer(tok_file).to_str() == b.tokenizer.to_str()
    assert build_data(_cfg(tmp_path, corpus)).info["tokenizer"]["origin"] == "cache"


def test_load_arrays_rejects_another_key(tmp_path):
    path = tmp_path / "x.npz"
    cache_lib.save_arrays(path, {"a": np.arange(5, dtype=np.int32)}, key={"k": 1}, meta={"m": 2})
    got = cache_lib.load_arrays(path, key={"k": 1})
    assert got["a"].tolist() == [0, 1, 2, 3, 4] and got["__meta__"] == {"m": 2}
    assert cache_lib.load_arrays(path, key={"k": 3}) is None
    assert cache_lib.load_arrays(tmp_path / "missing.npz", key={"k": 1}) is None
    assert cache_lib.digest({"a": 1, "b": 2}) == cache_lib.digest({"b": 2, "a": 1})
