"""Data package: build_data end to end (JSONL fixtures, synthetic, hub) and the real-data check."""

import json
import pathlib

import ml_collections
import numpy as np
import pytest

from altgrad_jax.data import (DataBundle, DataConfig, DataError, LabelVocab, SyntheticDataWarning,
                              build_data, write_jsonl)
from altgrad_jax.data import hub as hub_lib


def _docs(n, split, offset=0):
    words = ["tariff", "fruit", "council", "import", "fishery", "vessel", "aid", "wine"]
    recs = []
    for i in range(n):
        labels = [str(100 + (i % 4)), str(200 + (i % 3))] + (["999"] if split != "train" else [])
        recs.append({"text": f"doc {offset + i} " + " ".join(words[(i + k) % 8] for k in range(i % 9 + 3)),
                     "labels": labels, "labels_level1": [str(i % 2)],
                     "labels_level2": [str(10 + i % 5)], "split": split, "order": offset + i})
    return recs


@pytest.fixture()
def jsonl_dir(tmp_path):
    d = tmp_path / "eurlex"
    write_jsonl(d / "train.jsonl.gz", _docs(60, "train"))
    write_jsonl(d / "validation.jsonl", _docs(20, "validation", 1000))
    write_jsonl(d / "test.jsonl.gz", _docs(20, "test", 2000))
    return d


def _cfg(tmp_path, **kw):
    base = dict(DataConfig().__dict__, vocab_size=200, max_length=8,
                cache_dir=str(tmp_path / "cache"))
    base.update(kw)
    return ml_collections.ConfigDict(base)


def test_build_jsonl_with_workdir(tmp_path, jsonl_dir, monkeypatch):
    monkeypatch.setenv("ALTGRAD_DATA_DIR", str(jsonl_dir))
    wd = tmp_path / "run"
    b = build_data(_cfg(tmp_path, label_set="all"), str(wd))
    assert isinstance(b, DataBundle)
    assert b.info["dataset"] == "eurlex57k" and b.info["source"] == "jsonl"
    assert b.info["sizes"] == {"train": 60, "validation": 20, "test": 20}
    assert b.vocab.ids == ("200", "201", "202", "100", "101", "102", "103")
    assert b.train.labels.shape == (60, 7) and b.train.input_ids.shape == (60, 8)
    assert b.info["oov"]["validation"]["oov_label_occurrences"] == 20  # "999" not in train
    assert b.info["oov"]["train"]["oov_label_occurrences"] == 0
    assert b.info["mean_labels_per_doc"]["train"] == 2.0
    assert 0 < b.info["truncation_rate"]["train"] <= 1
    for name in ("label_vocab.json", "tokenizer.json", "data_info.json"):
        assert (wd / name).is_file()
    assert json.loads((wd / "data_info.json").read_text())["num_labels"] == 7
    assert LabelVocab.load(wd / "label_vocab.json") == b.vocab
    # Second build: tokenizer from the run folder, same arrays.
    b2 = build_data(_cfg(tmp_path, label_set="all"), str(wd))
    assert b2.info["tokenizer"]["origin"] == "run"
    np.testing.assert_array_equal(b2.test.input_ids, b.test.input_ids)
    # New run folder, same data: the cache hits.
    b3 = build_data(_cfg(tmp_path, label_set="all"), str(tmp_path / "run3"))
    assert b3.info["tokenizer"]["origin"] == "cache"
    with pytest.raises(DataError, match="label_set='all'.*new workdir"):
        build_data(_cfg(tmp_path, label_set="top100"), str(wd))


@pytest.mark.parametrize("label_set,n", [("top100", 7), ("level1", 2), ("level2", 5)])
def test_label_sets(tmp_path, jsonl_dir, label_set, n):
    b = build_data(_cfg(tmp_path, data_dir=str(jsonl_dir), label_set=label_set, source="jsonl"))
    assert b.num_labels == n and b.info["label_set"] == label_set


def test_random_subsets(tmp_path, jsonl_dir):
    cfg = _cfg(tmp_path, data_dir=str(jsonl_dir), max_train_docs=10, max_validation_docs=5,
               max_test_docs=0)
    b = build_data(cfg)
    assert b.info["sizes"] == {"train": 10, "validation": 5, "test": 20}
    assert b.info["full_sizes"]["train"] == 60
    # The subset is not the first 10 documents: decode the "doc N" prefix.
    first_ids = [b.tokenizer.decode(row.tolist()).split()[1] for row in b.train.input_ids]
    assert first_ids != [str(i) for i in range(10)]
    again = build_data(cfg)
    np.testing.assert_array_equal(again.train.input_ids, b.train.input_ids)
    other = build_data(_cfg(tmp_path, data_dir=str(jsonl_dir), max_train_docs=10, seed=5))
    assert not np.array_equal(other.train.input_ids, b.train.input_ids)


def test_auto_without_data_is_loudly_synthetic(tmp_path, monkeypatch):
    monkeypatch.delenv("ALTGRAD_DATA_DIR", raising=False)
    cfg = _cfg(tmp_path, synthetic_num_train=80, synthetic_num_validation=16,
               synthetic_num_test=16, synthetic_num_labels=6, vocab_size=300, max_length=32)
    with pytest.warns(SyntheticDataWarning, match="SYNTHETIC"):
        b = build_data(cfg, str(tmp_path / "run"))
    assert b.info["dataset"] == "synthetic" and b.info["synthetic"] is True
    assert b.info["source"] == "synthetic" and b.num_labels == 6
    assert b.info["sizes"] == {"train": 80, "validation": 16, "test": 16}
    assert json.loads((tmp_path / "run" / "data_info.json").read_text())["dataset"] == "synthetic"


def test_explicit_missing_dir_does_not_fall_back(tmp_path, monkeypatch):
    monkeypatch.delenv("ALTGRAD_DATA_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="ALTGRAD_DATA_DIR"):
        build_data(_cfg(tmp_path, data_dir=str(tmp_path / "missing")))
    with pytest.raises(FileNotFoundError, match="ALTGRAD_DATA_DIR"):
        build_data(_cfg(tmp_path, source="jsonl"))


def test_config_validation_and_missing_field(tmp_path, jsonl_dir):
    with pytest.raises(ValueError, match="auto, jsonl, hub, synthetic"):
        build_data(_cfg(tmp_path, source="web"))
    with pytest.raises(ValueError, match="valid names"):
        build_data(_cfg(tmp_path, label_set="top10"))
    recs = [{"text": "a b", "labels": ["1"]}] * 3
    for split in ("train", "validation", "test"):
        write_jsonl(tmp_path / "nolevels" / f"{split}.jsonl", recs)
    with pytest.raises(DataError, match="labels_level1"):
        build_data(_cfg(tmp_path, data_dir=str(tmp_path / "nolevels"), label_set="level1"))


def test_source_hub_uses_cache_dir(tmp_path, monkeypatch):
    calls = []

    def fake_download(out_dir, hub_name, **kw):
        calls.append(hub_name)
        for split, n in (("train", 30), ("validation", 8), ("test", 8)):
            write_jsonl(out_dir / f"{split}.jsonl.gz", _docs(n, split))
        return out_dir

    monkeypatch.setattr(hub_lib, "download_from_hub", fake_download)
    monkeypatch.setattr("altgrad_jax.data.records.download_from_hub", fake_download)
    b = build_data(_cfg(tmp_path, source="hub", hub_name="org/eurlex"))
    assert calls == ["org/eurlex"] and b.info["source"] == "hub"
    assert b.info["hub_name"] == "org/eurlex" and b.info["data_dir"].startswith(str(tmp_path))


def test_attribute_object_config(tmp_path, jsonl_dir):
    class Cfg:
        data_dir = str(jsonl_dir)
        vocab_size = 150
        max_length = 6
        cache_dir = str(tmp_path / "c")

    b = build_data(Cfg())
    assert b.max_length == 6 and b.info["label_set"] == "top100"


@pytest.mark.realdata
def test_real_eurlex_top100(data_dir, tmp_path):
    cfg = _cfg(tmp_path, data_dir=data_dir, source="jsonl", label_set="top100",
               max_train_docs=2000, max_validation_docs=500, max_test_docs=500,
               vocab_size=4000, max_length=128)
    b = build_data(cfg, str(tmp_path / "run"))
    info = b.info
    assert info["dataset"] == "eurlex57k" and b.num_labels == 100
    assert info["sizes"] == {"train": 2000, "validation": 500, "test": 500}
    assert info["full_sizes"] == {"train": 45000, "validation": 6000, "test": 6000}
    # Label set matches the data card's top-100 list (as a set; its tie order is arbitrary).
    card = json.loads((pathlib.Path(data_dir) / "labels_top100_train_freq.json").read_text())
    assert set(b.vocab.ids) == {c["id"] for c in card}
    assert 1.0 < info["mean_labels_per_doc"]["train"] < 5.0
    assert info["truncation_rate"]["train"] > 0.8  # most documents exceed 128 tokens
    assert info["oov"]["train"]["oov_label_occurrences"] > 0
    assert b.train.labels.sum(0).min() >= 1
    assert np.all(b.train.input_ids[:, 0] == 2)
