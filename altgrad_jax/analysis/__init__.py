"""The study: arms, cells, records, the pre-registered analysis and the report.

Modules (nothing in ``altgrad_jax.train`` imports this package):
  matrix       the arms registry (`ARMS`), stages -> cells (`expand`, `RunSpec`), `run_config`.
  overrides    config-file loading and typed ``group.field=value`` overrides.
  tuning       the tuning rule: one factor per arm (or per arm and format, ``tuning_scope``)
               from the tuning records (`choose_factors`).
  reuse        another study's record of the very same program, copied instead of rerun.
  records      compact run records (`make_record`, `write_record`, `load_records`).
  stats        the pooled OLS model, per-format contrasts with Holm, best vs runner-up, the
               bootstrap winner probability, the exponent-bit trend, gap closed; the model's
               checks, paired per-format differences and the minimum detectable effect.
  cost         done / to do and the core-hours of a study.
  study        a study opened from its config (`open_study`), plan.json, the dry-run table.
  plots        PNG plots from records.
  answer       the pre-registered primary analysis (`analyse_primary`), the format-tuned one
               (`analyse_format_tuned`) and the report's answer paragraph, tables and checks.
  sections     the report's other sections: mechanism, seeds' 12, E1M6, per-tensor, references,
               tuning.
  provenance   cell status, interim seed blocks, cost, machines, amendments, code caveats.
  markdown     numbers, intervals and tables as the report prints them.
  report       ``write_report(report_dir)`` assembles them; ``python -m
               altgrad_jax.analysis.report --study=DIR``.
  matrix_doc   ``TEST_MATRIX.md`` from the registries;
               ``python -m altgrad_jax.analysis.matrix_doc --config=configs/study_cpu.py``.

Entry point for a study: ``python sweep.py --config=configs/study_cpu.py`` (see its docstring).
The names below are imported on first use (plots/report pull in matplotlib and statsmodels).
"""

import importlib

_EXPORTS = {
    "ARMS": "matrix", "Arm": "matrix", "RunSpec": "matrix", "Stage": "matrix",
    "expand": "matrix", "run_config": "matrix", "select": "matrix", "run_name": "matrix",
    "parse_stage": "matrix", "load_config_file": "overrides", "parse_overrides": "overrides",
    "choose_factors": "tuning", "Choice": "tuning", "choice_key": "tuning",
    "Sources": "reuse",
    "make_record": "records", "write_record": "records", "load_records": "records",
    "read_jsonl": "records",
    "fit_pooled": "stats", "format_contrasts": "stats", "best_vs_runner_up": "stats",
    "winner_probability": "stats", "exponent_trend": "stats", "gap_closed": "stats",
    "mean_ci": "stats", "model_checks": "stats", "paired_differences": "stats",
    "minimum_detectable_effect": "stats", "format_alone_contrasts": "stats",
    "welch_combination": "stats", "trend_weights": "stats",
    "open_study": "study", "dry_run_lines": "study",
    "write_report": "report", "analyse_primary": "answer", "analyse_format_tuned": "answer",
    "write_test_matrix": "matrix_doc",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'altgrad_jax.analysis' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"altgrad_jax.analysis.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
