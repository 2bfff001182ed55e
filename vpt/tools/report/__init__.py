"""Tables and plots of finished ``vpt-train`` runs (the ``vpt-report`` command and its Python API).

    from vpt.tools.report import collect_runs, summarise, to_markdown, write_plots, write_tables
    runs = collect_runs(["outputs/multirun/2026-01-01_12-00-00"])   # completed runs; runs.skipped: the rest
    rows = summarise(runs)                     # grouped by the config keys that vary; mean ± std over seeds
    print(to_markdown(rows))
    write_tables(rows, "report"); write_plots(runs, "report")
"""
from .cli import main
from .plots import write_plots
from .runs import NoResultsError, Run, RunList, collect_runs, flatten, varying_keys
from .table import Row, Stat, accuracy_metric, default_metrics, harmonic_mean, summarise
from .writers import to_csv, to_json, to_markdown, write_tables

__all__ = [
    "NoResultsError", "Row", "Run", "RunList", "Stat", "accuracy_metric", "collect_runs", "default_metrics",
    "flatten", "harmonic_mean", "main", "summarise", "to_csv", "to_json", "to_markdown", "varying_keys", "write_plots",
    "write_tables",
]
