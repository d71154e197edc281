"""The "format x optimizer x seed" experiment matrix: plan it, read it, test it, report it.

Modules (nothing in ``altgrad_jax.train`` imports this package):
  matrix   `expand(matrix_cfg) -> [RunSpec]`, `run_config(spec) -> ConfigDict`, the optimizer
           presets (`OPTIMIZER_PRESETS`), `select` for ``sweep.py --only``. Pure, no training.
  results  `load_sweep(dir) -> [Run]`, `load_run`, `read_jsonl` (a malformed line is a
           ValueError naming ``file:line``), per-run summaries of ``metrics.jsonl``.
  stats    `t_quantile` (exact, no SciPy), `mean_ci`, `bootstrap_ci`, `paired_differences`,
           `cell_summaries`.
  plots    PNG plots: F1 and stall ratio by format x optimizer with CIs, learning curves.
  report   `write_report(sweep_dir) -> report.md`; also
           ``python -m altgrad_jax.analysis.report --sweep_dir=DIR``.

Entry point for a sweep: ``python sweep.py --config=configs/matrix.py`` (see its docstring).
The names below are imported on first use (plots/report pull in matplotlib).
"""

import importlib

_EXPORTS = {
    "OPTIMIZER_PRESETS": "matrix", "RunSpec": "matrix", "expand": "matrix",
    "run_config": "matrix", "select": "matrix", "run_name": "matrix",
    "parse_run_name": "matrix", "load_config_file": "matrix",
    "Run": "results", "load_run": "results", "load_sweep": "results", "read_jsonl": "results",
    "summarize_metrics": "results", "to_rows": "results",
    "Summary": "stats", "PairedDifference": "stats", "t_quantile": "stats", "t_cdf": "stats",
    "mean_ci": "stats", "bootstrap_ci": "stats", "paired_differences": "stats",
    "cell_summaries": "stats",
    "plot_metric_by_format": "plots", "plot_stall_by_format": "plots",
    "plot_learning_curves": "plots",
    "write_report": "report",
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
