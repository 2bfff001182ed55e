"""PNG plots of a sweep: accuracy vs prompt length, vs trainable parameters (log x), vs train time.

Drawn with matplotlib's object API on the Agg canvas (no pyplot), so a notebook's backend is left alone.
A plot is drawn only when its x axis varies across the rows; the written paths are returned.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

from ...errors import ConfigError
from ...files import atomic_write
from .runs import Run, varying_keys
from .table import COST_METRICS, Row, accuracy_metric, summarise

LENGTH_KEY = "prompt.length"
METHOD_KEYS = ("prompt.method", "method")


def _figure():
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ConfigError("plots need matplotlib: pip install 'vpt[plot]' (or pass --no-plots)") from error
    figure = Figure(figsize=(5.5, 4), layout="constrained")
    return figure, figure.add_subplot()


def _save(figure, path: Path) -> Path:
    return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120))  # vpt's one atomic writer


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _label(row: Row, keys: Sequence[str]) -> str:
    parts = [str(row.group[key]) if key in METHOD_KEYS else f"{key.rsplit('.', 1)[-1]}={row.group[key]}"
             for key in keys]
    return ", ".join(parts) or "all runs"


def _method(row: Row) -> str:
    methods = {run.method for run in row.runs}
    return str(methods.pop()) if len(methods) == 1 else "mixed"


def _series(rows: Sequence[Row], name_of) -> dict[str, list[Row]]:
    series: dict[str, list[Row]] = {}
    for row in rows:
        series.setdefault(name_of(row), []).append(row)
    return series


def _distinct(rows: Sequence[Row], x_of) -> int:
    return len({x_of(row) for row in rows if _finite(x_of(row))})


def plot_accuracy_vs_length(rows: Sequence[Row], metric: str, path: Path) -> Path:
    """One line per setting of the other keys (method, depth, ...); methods without prompt tokens as dashed levels."""
    figure, axes = _figure()
    others = [key for key in rows[0].group if key != LENGTH_KEY]
    for label, members in _series(rows, lambda row: _label(row, others)).items():
        points = sorted((row for row in members if _finite(row.group[LENGTH_KEY])), key=lambda r: r.group[LENGTH_KEY])
        if points:
            axes.errorbar([row.group[LENGTH_KEY] for row in points], [row.stats[metric].mean for row in points],
                          yerr=[row.stats[metric].std for row in points], marker="o", capsize=3, label=label)
        for row in members:
            if not _finite(row.group[LENGTH_KEY]) and _finite(row.stats[metric].mean):
                axes.axhline(row.stats[metric].mean, linestyle="--", linewidth=1, color="gray", label=label)
    axes.set(xlabel="prompt length (tokens)", ylabel=metric, title=f"{metric} vs prompt length")
    axes.legend(fontsize=8)
    return _save(figure, path)


def plot_accuracy_vs(rows: Sequence[Row], metric: str, x_metric: str, path: Path, log_x: bool = False) -> Path:
    """Each row a point (mean ± std on both axes), one colour per method."""
    figure, axes = _figure()
    for method, members in _series(rows, _method).items():
        points = [row for row in members if _finite(row.stats[x_metric].mean) and _finite(row.stats[metric].mean)
                  and (row.stats[x_metric].mean > 0 or not log_x)]
        if points:
            axes.errorbar([row.stats[x_metric].mean for row in points], [row.stats[metric].mean for row in points],
                          xerr=[row.stats[x_metric].std for row in points],
                          yerr=[row.stats[metric].std for row in points],
                          marker="o", linestyle="none", capsize=3, label=method)
    if log_x:
        axes.set_xscale("log")
    x_label = {"trainable_params": "trainable parameters", "train_seconds": "train time (s)"}.get(x_metric, x_metric)
    axes.set(xlabel=x_label, ylabel=metric, title=f"{metric} vs {x_label}")
    axes.legend(fontsize=8)
    return _save(figure, path)


def write_plots(runs: Sequence[Run], out_dir: str | os.PathLike, group_by: Sequence[str] | None = None,
                metric: str | None = None) -> list[Path]:
    """Draw the plots whose x axis varies into ``out_dir``; return the PNG paths written (maybe none).

    ``metric`` is the accuracy axis (default: the runs' primary test metric, e.g. test_top1 or test_map; see
    :func:`~vpt.tools.report.table.accuracy_metric`).
    """
    metric = metric or accuracy_metric(runs)
    if metric is None:
        return []
    group_by = list(varying_keys(runs) if group_by is None else group_by)
    costs = [name for name in COST_METRICS if any(run.metric(name) is not None for run in runs)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if any(run.setting(LENGTH_KEY) is not None for run in runs):
        by_length = group_by + ([LENGTH_KEY] if LENGTH_KEY not in group_by else [])
        rows = summarise(runs, [metric], by_length)
        if _distinct(rows, lambda row: row.group[LENGTH_KEY]) > 1:
            written.append(plot_accuracy_vs_length(rows, metric, out / "accuracy_vs_prompt_length.png"))
    rows = summarise(runs, [metric] + costs, group_by)
    for x_metric, name, log_x in (("trainable_params", "accuracy_vs_trainable_params.png", True),
                                  ("train_seconds", "accuracy_vs_train_time.png", False)):
        if x_metric in costs and _distinct(rows, lambda row, x=x_metric: row.stats[x].mean) > 1:
            written.append(plot_accuracy_vs(rows, metric, x_metric, out / name, log_x=log_x))
    return written
