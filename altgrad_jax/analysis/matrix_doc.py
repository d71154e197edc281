"""``TEST_MATRIX.md``, generated from the registries (never edited by hand).

Contents: every registered format with its range and specials (`altgrad_jax.formats`), the arms
(`altgrad_jax.analysis.matrix.ARMS`), the layer-monitoring thresholds (the ``diag`` and
``stability`` fields of ``configs/default.py``), and the study's planned cells (its config; not
its records, so committing a record never makes the file stale). Deterministic: no timestamps, so an unchanged registry regenerates the same
file byte for byte.

Command::

    python -m altgrad_jax.analysis.matrix_doc --config=configs/study_cpu.py --out=TEST_MATRIX.md
"""

from __future__ import annotations

from collections.abc import Sequence

from altgrad_jax.analysis.matrix import ARMS
from altgrad_jax.analysis.overrides import load_config_file
from altgrad_jax.formats import BUILTIN_FORMATS, get_format

COMMAND = "python -m altgrad_jax.analysis.matrix_doc --config={config} --out=TEST_MATRIX.md"


def _table(header, rows) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
            + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def _formats() -> list[str]:
    rows = []
    for name in BUILTIN_FORMATS:  # not a user's (or a test's) registrations
        f = get_format(name)
        specials = ", ".join(s for s, on in (("inf", f.has_inf), ("NaN", f.has_nan)) if on)
        rows.append([name, f.exponent_bits, f.mantissa_bits, f.bias, f.nan_inf,
                     "yes" if f.subnormals else "no", f"{f.max:.6g}", f"{f.min_normal:.6g}",
                     f"{f.min_subnormal:.6g}" if f.subnormals else "—", specials or "none"])
    return _table(["format", "E", "M", "bias", "inf/NaN policy", "subnormals", "max",
                   "min normal", "min subnormal", "specials"], rows)


def _arms() -> list[str]:
    rows = [[a.name, a.regime, a.tune_field, f"{a.tune_base:g}", a.role,
             "<br>".join(f"`{k}={v!r}`" for k, v in a.overrides.items())] for a in ARMS.values()]
    return _table(["arm", "regime", "tuned field", "base", "role", "overrides"], rows)


def _thresholds(default_config: str) -> list[str]:
    cfg = load_config_file(default_config)
    rows = [[f"{group}.{k}", f"`{v!r}`"] for group in ("diag", "stability")
            for k, v in cfg[group].items()]
    return _table(["field (configs/default.py)", "value"], rows)


def _cells(study) -> list[str]:
    """The planned cells per stage. What has run is not here (it changes with every committed
    record): see the report's Status section or ``sweep.py --dry_run``."""
    rows = []
    for stage in dict.fromkeys(s.stage for s in study.planned):
        specs = [s for s in study.planned if s.stage == stage]
        rows.append([stage, ", ".join(dict.fromkeys(s.format for s in specs)),
                     ", ".join(dict.fromkeys(s.arm for s in specs)),
                     ", ".join(str(x) for x in dict.fromkeys(s.seed for s in specs)),
                     len(specs)])
    return _table(["stage", "formats", "arms", "seeds", "cells"], rows)


def _extension_rule(study) -> list[str]:
    factors = ", ".join(str(f) for f in study.cfg.get("tuning_factors", ()))
    n = int(study.cfg.get("tuning_extensions", 0))
    if not n:
        return [f"Tuning factors: {factors}; no bracket extension.", ""]
    return [f"Tuning factors: {factors}. Bracket extension (`tuning_extensions={n}`): an arm "
            "whose best factor is the largest or smallest tried gets one more factor beyond "
            f"that edge on every tuning format, up to {n} more per arm; those cells are added "
            "from the records and are not counted above (`altgrad_jax.analysis.tuning`).", ""]


def render(study_config: str, default_config: str = "configs/default.py") -> str:
    """The text of TEST_MATRIX.md for the study config file ``study_config``."""
    from altgrad_jax.analysis.study import open_study

    study = open_study(load_config_file(study_config))
    lines = ["# Test matrix", "",
             f"Generated from the registries by `{COMMAND.format(config=study_config)}`; "
             "do not edit by hand.", "", "## Formats (altgrad_jax.formats)", "",
             "Ranges are of the unscaled format; under per-tensor amax scaling the bias only "
             "shifts the grid by a power of two the scale absorbs.", ""]
    lines += _formats() + ["", "## Arms (altgrad_jax.analysis.matrix.ARMS)", "",
                           "Regime a: float32 masters, quantized forward; regime b: weights "
                           "stored on their grid. FP32 reference: format `none` + `adamw`.", ""]
    lines += _arms() + ["", "## Layer-monitoring thresholds", ""] + _thresholds(default_config)
    lines += ["", f"## Cells of `{study_config}` (planned)", "",
              f"Records: `{study.report_dir}/runs/`; which cells have run: the Status section of "
              f"`{study.report_dir}/REPORT.md`, or `python sweep.py --config={study_config} "
              "--dry_run`.", ""] + _cells(study) + [""] + _extension_rule(study)
    return "\n".join(lines)


def write_test_matrix(study_config: str, out: str = "TEST_MATRIX.md") -> str:
    """Writes ``out``; returns its path."""
    with open(out, "w") as f:
        f.write(render(study_config))
    return out


def main(argv: Sequence[str]) -> None:
    from absl import flags

    if len(argv) > 1:
        raise SystemExit(f"unexpected arguments: {list(argv[1:])}")
    try:
        print(write_test_matrix(flags.FLAGS.config, flags.FLAGS.out))
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("config", "configs/study_cpu.py", "Study config file.")
    flags.DEFINE_string("out", "TEST_MATRIX.md", "Output path.")
    app.run(main)
