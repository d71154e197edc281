"""The console helpers and the run picture, without training anything."""

import io
import json
import logging

import pytest

from altgrad_jax.analysis import plot_run as plot_lib
from altgrad_jax.io import console as console_lib


def test_library_info_goes_to_the_log_file_not_the_terminal(tmp_path):
    terminal = io.StringIO()
    handler = logging.StreamHandler(terminal)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        undo = console_lib.route_library_logs(str(tmp_path))
        logging.getLogger("absl").info("CheckpointManager init: noisy internals")
        logging.getLogger("jax._src.xla_bridge").info("Unable to initialize backend 'tpu'")
        logging.getLogger("absl").warning("a real warning")
        undo()
        logging.getLogger("absl").info("after undo: not in the file")
    finally:
        root.removeHandler(handler)
    shown = terminal.getvalue()
    assert "noisy internals" not in shown and "backend 'tpu'" not in shown
    assert "a real warning" in shown
    logged = (tmp_path / console_lib.LOG_FILE).read_text()
    assert "noisy internals" in logged and "backend 'tpu'" in logged
    assert "after undo" not in logged


def test_verbose_keeps_library_info_on_the_terminal(tmp_path):
    terminal = io.StringIO()
    handler = logging.StreamHandler(terminal)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        undo = console_lib.route_library_logs(str(tmp_path), verbose=True)
        logging.getLogger("absl").info("orbax detail")
        undo()
    finally:
        root.removeHandler(handler)
    assert "orbax detail" in terminal.getvalue()


def test_console_line_and_summaries():
    out = io.StringIO()
    console_lib.Console(stream=out).line("step 5/10", loss=0.123456, lr=None, steps_per_s=3.0)
    assert out.getvalue() == "step 5/10 | loss 0.1235 | steps per s 3\n"
    info = {"dataset": "synthetic", "sizes": {"train": 64, "validation": 16, "test": 16},
            "num_labels": 5, "truncation_rate": {"train": 0.5}, "max_length": 16}
    assert console_lib.data_summary_line(info) == (
        "data: synthetic | train 64 / validation 16 / test 16 docs | 5 labels | "
        "50% of train truncated at 16")


def test_plot_run_writes_a_png_with_every_panel(tmp_path):
    rows = [{"step": s, "train/loss_avg": 1.0 / s, "diag/stall_ratio": 0.5,
             "rank/effective_mean": 10.0 - s} for s in range(1, 6)]
    rows.append({"step": 5, "eval/micro_f1": 0.6, "eval/macro_f1": float("nan")})
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    curves = plot_lib.read_curves(str(tmp_path))
    assert curves["train/loss_avg"] == ([1, 2, 3, 4, 5], [1.0, 0.5, 1 / 3, 0.25, 0.2])
    assert "eval/macro_f1" not in curves  # non-finite values are dropped
    png = plot_lib.plot_run(str(tmp_path))
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plot_run_names_the_fix_for_a_wrong_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="run folder"):
        plot_lib.read_curves(str(tmp_path))
