"""altgrad_jax.io.writers: JSONL resume/repair, NaN handling, console, W&B offline, progress bar."""

import json
import logging
import math
import os
import time

import jax.numpy as jnp
import numpy as np
import pytest

from altgrad_jax.io import (
    ConsoleWriter,
    JsonlWriter,
    MetricWriter,
    MultiWriter,
    ProgressBar,
    WandbWriter,
    make_writers,
    read_jsonl,
)


def _steps(path):
    return [row["step"] for row in read_jsonl(path)]


def _write_steps(path, steps, resume_step=None):
    w = JsonlWriter(path, resume_step=resume_step)
    for s in steps:
        w.write(s, {"train/loss": 1.0 / (s + 1)})
    w.close()


def test_protocol(tmp_path):
    w = JsonlWriter(tmp_path / "m.jsonl")
    assert isinstance(w, MetricWriter) and isinstance(ConsoleWriter(), MetricWriter)
    w.close()


def test_jsonl_lines_have_explicit_step(tmp_path):
    path = tmp_path / "sub" / "metrics.jsonl"
    _write_steps(path, [0, 10, 20])
    lines = path.read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 10, 20]
    assert json.loads(lines[1]) == {"step": 10, "train/loss": 1.0 / 11}


def test_jsonl_resume_truncates_later_steps_no_duplicates(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _write_steps(path, [1, 2, 3, 4, 5])  # crashed after step 5; last checkpoint at step 3
    _write_steps(path, [4, 5, 6], resume_step=3)
    assert _steps(path) == [1, 2, 3, 4, 5, 6]
    _write_steps(path, [7], resume_step=6)
    assert _steps(path) == [1, 2, 3, 4, 5, 6, 7]
    _write_steps(path, [1], resume_step=0)  # resumed from step 0: everything after it goes
    assert _steps(path) == [1]


def test_jsonl_truncated_last_line_dropped_with_warning(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    _write_steps(path, [1, 2, 3])
    with open(path, "a") as f:
        f.write('{"step": 4, "train/lo')  # killed mid-line, no newline
    with caplog.at_level(logging.WARNING):
        _write_steps(path, [4], resume_step=3)
    assert "last line" in caplog.text and "metrics.jsonl" in caplog.text
    assert _steps(path) == [1, 2, 3, 4]
    for line in path.read_text().splitlines():
        json.loads(line)  # every line is valid JSON again


def test_jsonl_fresh_run_keeps_old_file_as_backup(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    _write_steps(path, [1, 2])
    with caplog.at_level(logging.WARNING):
        _write_steps(path, [1])
    assert _steps(path) == [1]
    backups = [p for p in os.listdir(tmp_path) if p.endswith(".bak")]
    assert len(backups) == 1 and _steps(tmp_path / backups[0]) == [1, 2]
    assert "from scratch" in caplog.text


def test_jsonl_nonfinite_and_numpy_values(tmp_path):
    path = tmp_path / "metrics.jsonl"
    w = JsonlWriter(path)
    w.write(
        np.int64(3),
        {
            "a": float("nan"),
            "b": np.float32(np.inf),
            "c": jnp.asarray(-jnp.inf),
            "d": np.int32(7),
            "e": jnp.float32(0.25),
            "f": True,
            "g": np.array([1.0, np.nan]),
        },
    )
    w.close()
    line = path.read_text().strip()
    assert "NaN" not in line and "Infinity" not in line  # strict JSON
    raw = json.loads(line)
    expected = {"a": "nan", "b": "inf", "c": "-inf", "d": 7, "e": 0.25, "f": True}
    expected["g"] = [1.0, "nan"]
    assert raw == {"step": 3, **expected}
    (row,) = read_jsonl(path)
    assert math.isnan(row["a"]) and row["b"] == math.inf and row["c"] == -math.inf


def test_jsonl_rejects_step_key_and_writes_config(tmp_path):
    w = JsonlWriter(tmp_path / "metrics.jsonl")
    with pytest.raises(ValueError, match="step"):
        w.write(1, {"step": 2})
    w.write_config({"optim": {"lr": 1e-3, "dtype": jnp.bfloat16}, "seed": np.int64(0)})
    w.close()
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["optim"] == {"lr": 1e-3, "dtype": "bfloat16"} and config["seed"] == 0


def test_console_writer_logs_one_line(caplog):
    with caplog.at_level(logging.INFO):
        ConsoleWriter().write(
            12, {"train/loss": jnp.float32(0.123456), "perf/steps_per_s": 3.0, "zzz": 1.0}
        )
        ConsoleWriter().write(13, {"other/x": 2.0})
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "step 12 | train/loss=0.1235 | perf/steps_per_s=3"
    assert lines[1] == "step 13 | other/x=2"


def test_multiwriter_closes_all_even_if_one_fails(tmp_path):
    class Boom:
        closed = False

        def write(self, step, metrics):
            pass

        def write_config(self, config):
            pass

        def close(self):
            raise OSError("boom")

    jsonl = JsonlWriter(tmp_path / "m.jsonl")
    multi = MultiWriter([Boom(), jsonl])
    multi.write(1, {"x": 1.0})
    with pytest.raises(OSError, match="boom"):
        multi.close()
    assert jsonl._file.closed


def test_wandb_disabled(tmp_path):
    w = WandbWriter("altgrad-test", "disabled-run", mode="disabled", dir=tmp_path, config={"a": 1})
    w.write(1, {"train/loss": 0.5, "nan": float("nan")})
    w.write_config({"b": 2})
    w.close()
    assert not (tmp_path / "wandb").exists() or not any((tmp_path / "wandb").iterdir())


def test_wandb_bad_mode(tmp_path):
    with pytest.raises(ValueError, match="offline"):
        WandbWriter("p", "n", mode="shared", dir=tmp_path)
    with pytest.raises(ValueError, match="offline"):
        make_writers(tmp_path, wandb_mode="nope")


def test_wandb_offline_writes_locally_and_resumes_id(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    start = time.perf_counter()
    writers = make_writers(
        tmp_path, wandb_mode="offline", wandb_project="altgrad-test", config={"lr": 1e-3}
    )
    writers.write(1, {"train/loss": 0.5, "eval/micro_f1": float("nan")})
    writers.close()
    run_id = (tmp_path / "wandb_run_id").read_text().strip()
    runs = [p for p in os.listdir(tmp_path / "wandb") if p.startswith("offline-run-")]
    assert len(runs) == 1 and runs[0].endswith(run_id)
    assert any(f.endswith(".wandb") for f in os.listdir(tmp_path / "wandb" / runs[0]))
    # Resuming reuses the id; a fresh start would not.
    writers = make_writers(
        tmp_path, wandb_mode="offline", wandb_project="altgrad-test", resume_step=1
    )
    writers.write(2, {"train/loss": 0.4})
    writers.close()
    assert (tmp_path / "wandb_run_id").read_text().strip() == run_id
    assert _steps(tmp_path / "metrics.jsonl") == [1, 2]
    assert time.perf_counter() - start < 30


def test_make_writers_default_has_no_wandb(tmp_path):
    writers = make_writers(tmp_path, config={"x": 1})
    assert [type(w).__name__ for w in writers.writers] == ["JsonlWriter"]  # console: opt-in
    writers.write(5, {"train/loss": 1.0})
    writers.close()
    assert _steps(tmp_path / "metrics.jsonl") == [5]
    assert json.loads((tmp_path / "config.json").read_text()) == {"x": 1}
    assert not (tmp_path / "wandb_run_id").exists()


def test_progress_bar_silent_without_tty(capsys):
    with ProgressBar(total=10, initial=2) as bar:  # pytest captures stdout: not a TTY
        assert not bar.enabled
        bar.update(3, loss=0.5, steps_per_s=10.0)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    bar = ProgressBar(total=10, disable=True)
    bar.update(1)
    bar.close()


def test_progress_bar_enabled_renders(capsys):
    with ProgressBar(total=10, initial=2, disable=False, desc="train") as bar:
        bar.update(3, loss=jnp.float32(0.5), steps_per_s=10.0)
    out = capsys.readouterr().out
    assert "5/10" in out and "loss=0.5" in out
