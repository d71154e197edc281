"""A multi-label JSONL corpus with only train and test files and its own field names."""

import collections
import json
import pathlib
import sys

import ml_collections
import numpy as np
import pytest

from altgrad_jax.data import DataConfig, DataError, build_data, encode_texts, write_jsonl

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORDS = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "lambda", "theta", "zeta"]


def _docs(n, offset):
    # Every document is unique ("item <n>"), labels are "t<k>" strings in the field "tags".
    return [{"body": f"item {offset + i} " + " ".join(WORDS[(i * 3 + k) % 10] for k in range(i % 7 + 2)),
             "tags": [f"t{i % 5}"] + ([f"rare{i}"] if i % 17 == 0 else []), "id": offset + i}
            for i in range(n)]


@pytest.fixture()
def two_split_dir(tmp_path):
    """The README's example layout: my_corpus/train.jsonl + my_corpus/test.jsonl.gz."""
    d = tmp_path / "my_corpus"
    write_jsonl(d / "train.jsonl", _docs(100, 0))
    write_jsonl(d / "test.jsonl.gz", _docs(30, 5000))
    return d


def _cfg(tmp_path, d, **kw):
    base = dict(DataConfig().__dict__, source="jsonl", data_dir=str(d), text_field="body",
                label_field="tags", label_set="all", vocab_size=150, max_length=24,
                validation_fraction=0.2, cache_dir=str(tmp_path / "cache"))
    base.update(kw)
    return ml_collections.ConfigDict(base)


def _row_to_doc(tokenizer, docs, max_length):
    """Maps each encoded row (bytes) to its source document, by encoding the docs independently."""
    enc = encode_texts(tokenizer, [d["body"] for d in docs], max_length).input_ids
    table = {row.tobytes(): doc for row, doc in zip(enc, docs)}
    assert len(table) == len(docs)  # rows identify documents
    return table


def test_validation_is_carved_from_train_only(tmp_path, two_split_dir):
    wd = tmp_path / "run"
    b = build_data(_cfg(tmp_path, two_split_dir), str(wd))
    assert b.info["validation"] == "carved from train, fraction 0.2, seed 0"
    assert json.loads((wd / "data_info.json").read_text())["validation"] == b.info["validation"]
    assert b.info["sizes"] == {"train": 80, "validation": 20, "test": 30}
    assert b.info["text_field"] == "body" and b.info["label_field"] == "tags"
    train_docs, test_docs = _docs(100, 0), _docs(30, 5000)
    table = _row_to_doc(b.tokenizer, train_docs, 24)
    kept = [table[r.tobytes()]["id"] for r in b.train.input_ids]
    carved = [table[r.tobytes()]["id"] for r in b.validation.input_ids]
    assert sorted(kept + carved) == list(range(100))  # a partition of train
    test_rows = {r.tobytes() for r in encode_texts(b.tokenizer, [d["body"] for d in test_docs],
                                                   24).input_ids}
    assert not test_rows & {r.tobytes() for r in b.validation.input_ids}  # test never validates
    # Labels: vocabulary from the kept train documents only, ordered by frequency (Counter).
    counts = collections.Counter(t for i in kept for t in train_docs[i]["tags"])
    assert set(b.vocab.ids) == set(counts)
    assert [counts[i] for i in b.vocab.ids] == sorted(counts.values(), reverse=True)
    for row, i in zip(b.validation.labels, carved):
        want = {t for t in train_docs[i]["tags"] if t in counts}
        assert {b.vocab.ids[j] for j in np.flatnonzero(row)} == want
    # Seeded: the same seed carves the same documents, another seed others.
    again = build_data(_cfg(tmp_path, two_split_dir))
    np.testing.assert_array_equal(again.validation.input_ids, b.validation.input_ids)
    other = build_data(_cfg(tmp_path, two_split_dir, seed=1))
    assert other.info["validation"] == "carved from train, fraction 0.2, seed 1"
    other_rows = {r.tobytes() for r in other.validation.input_ids}
    assert len(other_rows) == 20 and other_rows != {r.tobytes() for r in b.validation.input_ids}


def test_validation_file_is_used_when_present(tmp_path, two_split_dir):
    write_jsonl(two_split_dir / "validation.jsonl", _docs(10, 9000))
    b = build_data(_cfg(tmp_path, two_split_dir))
    assert b.info["validation"] == "file validation.jsonl"
    assert b.info["sizes"] == {"train": 100, "validation": 10, "test": 30}


def test_missing_validation_with_fraction_zero_names_the_fix(tmp_path, two_split_dir):
    with pytest.raises(DataError, match="validation_fraction > 0"):
        build_data(_cfg(tmp_path, two_split_dir, validation_fraction=0.0))
    with pytest.raises(ValueError, match="validation_fraction must be in"):
        build_data(_cfg(tmp_path, two_split_dir, validation_fraction=1.0))


def test_wrong_field_names_name_the_config_field(tmp_path, two_split_dir):
    with pytest.raises(DataError, match="data.text_field"):
        build_data(_cfg(tmp_path, two_split_dir, text_field="text"))
    with pytest.raises(DataError, match="data.label_field"):
        build_data(_cfg(tmp_path, two_split_dir, label_field="labels"))


@pytest.mark.standard_promotion
def test_trains_end_to_end_without_a_validation_file(tmp_path, two_split_dir):
    sys.path.insert(0, str(ROOT))
    from configs import smoke
    from altgrad_jax.train.loop import train_and_evaluate

    config = smoke.get_config()
    config.data.source = "jsonl"
    config.data.data_dir = str(two_split_dir)
    config.data.text_field = "body"
    config.data.label_field = "tags"
    config.data.label_set = "all"
    config.data.validation_fraction = 0.2
    config.data.cache_dir = str(tmp_path / "cache")
    config.train.num_steps = 4
    config.train.checkpoint_every = 0
    config.diag.rank_every = 0
    config.diag.shadow_every = 0
    wd = tmp_path / "run"
    results = train_and_evaluate(config, str(wd))
    assert results["status"] == "completed"
    info = json.loads((wd / "data_info.json").read_text())
    assert info["validation"] == "carved from train, fraction 0.2, seed 0"
    assert info["sizes"] == {"train": 80, "validation": 20, "test": 30}
    saved = json.loads((wd / "results.json").read_text())
    assert "eval/micro_f1" in saved["validation"] and "test/micro_f1" in saved["test"]
