"""Data package: data dir resolution, JSONL reading/writing, hub preparation (offline)."""

import gzip
import json

import pytest

from altgrad_jax.data import (DataError, find_split_file, read_jsonl, require_data_dir,
                              resolve_data_dir, write_jsonl)
from altgrad_jax.data import hub as hub_lib
from altgrad_jax.data import prepare


def _write_lines(path, lines):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")


RECS = [{"text": "first doc", "labels": ["1", "2"]}, {"text": "second doc", "labels": [3]}]


@pytest.mark.parametrize("name", ["train.jsonl", "train.jsonl.gz"])
def test_read_plain_and_gz(tmp_path, name):
    _write_lines(tmp_path / name, [json.dumps(r) for r in RECS] + [""])
    out = read_jsonl(tmp_path / name, label_fields=("labels",))
    assert [r["text"] for r in out] == ["first doc", "second doc"]
    assert out[1]["labels"] == ["3"]  # ints become strings
    assert find_split_file(tmp_path, "train") == tmp_path / name


def test_write_read_roundtrip_and_fields(tmp_path):
    recs = [dict(r, extra="x") for r in RECS]
    path = write_jsonl(tmp_path / "validation.jsonl.gz", recs)
    assert path.is_file() and not list(tmp_path.glob("*.tmp*"))
    assert read_jsonl(path, label_fields=("labels",))[0] == dict(recs[0])
    slim = read_jsonl(path, fields=(), label_fields=("labels",))
    assert set(slim[0]) == {"text", "labels"}


def test_malformed_json_names_file_and_line(tmp_path):
    path = tmp_path / "train.jsonl.gz"
    _write_lines(path, [json.dumps(RECS[0]), '{"text": "oops", "labels": [}'])
    with pytest.raises(DataError, match=r"train\.jsonl\.gz:2: malformed JSON"):
        read_jsonl(path)


def test_missing_text_counts_and_names_lines(tmp_path):
    path = tmp_path / "test.jsonl"
    _write_lines(path, [json.dumps(RECS[0]), json.dumps({"text": "  ", "labels": []}),
                        json.dumps({"labels": ["1"]})])
    with pytest.raises(DataError) as e:
        read_jsonl(path)
    msg = str(e.value)
    assert "2 record(s)" in msg and "test.jsonl:2" in msg and "test.jsonl:3" in msg


def test_bad_labels_field(tmp_path):
    path = tmp_path / "train.jsonl"
    _write_lines(path, [json.dumps({"text": "a", "labels": "1"})])
    with pytest.raises(DataError, match=r"train\.jsonl:1"):
        read_jsonl(path, label_fields=("labels",))
    with pytest.raises(DataError, match="labels_level1"):
        read_jsonl(path, label_fields=("labels_level1",))


def test_ambiguous_and_missing_split_files(tmp_path):
    _write_lines(tmp_path / "train.jsonl", [json.dumps(RECS[0])])
    _write_lines(tmp_path / "train.jsonl.gz", [json.dumps(RECS[0])])
    with pytest.raises(DataError, match="ambiguous"):
        find_split_file(tmp_path, "train")
    with pytest.raises(DataError, match="validation.jsonl.gz"):
        find_split_file(tmp_path, "validation")


def test_resolve_data_dir_order(tmp_path, monkeypatch):
    monkeypatch.setenv("ALTGRAD_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir(str(tmp_path / "arg")) == tmp_path / "arg"
    assert resolve_data_dir("") == tmp_path / "env"
    monkeypatch.delenv("ALTGRAD_DATA_DIR")
    assert resolve_data_dir("") is None


def test_require_data_dir_message(tmp_path, monkeypatch):
    monkeypatch.delenv("ALTGRAD_DATA_DIR", raising=False)
    with pytest.raises(FileNotFoundError) as e:
        require_data_dir("")
    msg = str(e.value)
    for needle in ("ALTGRAD_DATA_DIR", "--config.data.data_dir", "python -m altgrad_jax.data.prepare",
                   "--config.data.source=synthetic", "not set"):
        assert needle in msg
    monkeypatch.setenv("ALTGRAD_DATA_DIR", str(tmp_path / "nope_env"))
    with pytest.raises(FileNotFoundError) as e:
        require_data_dir(str(tmp_path / "nope_arg"))
    assert "nope_arg" in str(e.value) and "nope_env" in str(e.value)
    (tmp_path / "ok").mkdir()
    assert require_data_dir(str(tmp_path / "ok")) == tmp_path / "ok"


def _fake_hub(monkeypatch, calls):
    import datasets

    def fake_load_dataset(name, **kwargs):
        calls.append(name)
        feats = datasets.Features({"celex_id": datasets.Value("string"),
                                   "text": datasets.Value("string"),
                                   "eurovoc_concepts": datasets.Sequence(datasets.Value("string"))})

        def split(n, tag):
            return datasets.Dataset.from_dict(
                {"celex_id": [f"{tag}{i}" for i in range(n)],
                 "text": [f"{tag} document number {i}" for i in range(n)],
                 "eurovoc_concepts": [[str(i % 3), "42"] for i in range(n)]}, features=feats)

        return datasets.DatasetDict({"train": split(5, "tr"), "dev": split(3, "dv"),
                                     "test": split(2, "te")})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)


def test_prepare_with_fake_hub(tmp_path, monkeypatch, capsys):
    calls = []
    _fake_hub(monkeypatch, calls)
    out = tmp_path / "eurlex"
    assert prepare.main(["--out", str(out), "--hub_name", "fake/eurlex"]) == 0
    assert calls == ["fake/eurlex"]
    assert "ALTGRAD_DATA_DIR" in capsys.readouterr().out
    sizes = {s: len(read_jsonl(out / f"{s}.jsonl.gz", label_fields=("labels",)))
             for s in ("train", "validation", "test")}
    assert sizes == {"train": 5, "validation": 3, "test": 2}
    rec = read_jsonl(out / "train.jsonl.gz")[1]
    assert rec["labels"] == ["1", "42"] and rec["text"] == "tr document number 1"
    assert rec["celex_id"] == "tr1"
    # Present files are not downloaded again.
    hub_lib.download_from_hub(out, "fake/eurlex")
    assert calls == ["fake/eurlex"]


def test_hub_classlabel_and_failure(tmp_path, monkeypatch):
    import datasets

    def fake(name, **kwargs):
        feats = datasets.Features({"text": datasets.Value("string"),
                                   "labels": datasets.Sequence(datasets.ClassLabel(
                                       names=["100", "200", "300"]))})
        ds = datasets.Dataset.from_dict({"text": ["a b", "c d"], "labels": [[0, 2], [1]]},
                                        features=feats)
        return datasets.DatasetDict({"train": ds, "validation": ds, "test": ds})

    monkeypatch.setattr(datasets, "load_dataset", fake)
    hub_lib.download_from_hub(tmp_path / "a", "x/y")
    assert read_jsonl(tmp_path / "a" / "test.jsonl.gz")[0]["labels"] == ["100", "300"]

    def broken(name, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", broken)
    with pytest.raises(DataError, match="Could not load 'x/y'.*synthetic"):
        hub_lib.download_from_hub(tmp_path / "b", "x/y")
