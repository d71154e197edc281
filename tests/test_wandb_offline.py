"""An offline W&B run (log.wandb_mode="offline", no network) keeps every logged metric in its folder.

The run's ``wandb/offline-run-*/run-*.wandb`` file is what ``wandb sync`` uploads. It is a LevelDB
log (32 KiB blocks of ``crc32c | length | type`` records after a 7-byte ``:W&B`` header) of W&B's
own ``Record`` protobufs; this test reads it with that protobuf class and compares every history
value with the run's metrics.jsonl.
"""

import json
import math
import pathlib
import struct
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
_BLOCK, _HEADER = 32768, 7


def _wandb_records(path):
    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:8]
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # block trailer padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        if length == 0 and kind == 0:  # zero padding to the block end
            pos += left
            continue
        chunk, pos = data[pos + _HEADER:pos + _HEADER + length], pos + _HEADER + length
        if kind == 1:  # FULL
            yield chunk
        elif kind == 2:  # FIRST
            pending = chunk
        elif kind == 3:  # MIDDLE
            pending += chunk
        elif kind == 4:  # LAST
            yield pending + chunk


def _history(path):
    from wandb.proto import wandb_internal_pb2

    rows = {}
    for blob in _wandb_records(path):
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(blob)
        if rec.WhichOneof("record_type") == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                   for item in rec.history.item}
            rows.setdefault(int(row["_step"]), {}).update(row)
    return rows


@pytest.mark.standard_promotion
def test_offline_run_folder_holds_the_logged_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    pytest.importorskip("wandb")
    sys.path.insert(0, str(ROOT))
    from configs import smoke
    from altgrad_jax.train.loop import train_and_evaluate

    config = smoke.get_config()
    config.log.wandb_mode = "offline"
    config.data.cache_dir = str(tmp_path / "cache")
    config.train.num_steps = 4
    config.train.checkpoint_every = 0
    config.diag.rank_every = 0
    config.diag.shadow_every = 0
    wd = tmp_path / "run"
    assert train_and_evaluate(config, str(wd))["status"] == "completed"

    (run_file,) = (wd / "wandb").glob("offline-run-*/run-*.wandb")
    history = _history(run_file)
    logged = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
    assert any("train/loss" in line for line in logged)
    checked = 0
    for line in logged:
        step = line.pop("step")
        for key, value in line.items():
            if not isinstance(value, (int, float)):
                continue
            assert key in history.get(step, {}), (step, key)
            got = history[step][key]
            if isinstance(value, float) and math.isnan(value):
                assert isinstance(got, str) or math.isnan(got)
            else:
                assert got == pytest.approx(value, rel=1e-6, abs=1e-12), (step, key)
            checked += 1
    assert checked > 50
