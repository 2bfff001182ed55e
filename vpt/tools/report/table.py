"""Grouping runs into table rows: mean ± sample std over seeds per metric, with the paper's number beside it."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple, Sequence

from ...errors import ConfigError
from .runs import TRANSFER_MEAN_METRIC, Run, as_number, comparable, varying_keys

# Default metrics, each kept when some run reports it: the runs' tasks' primary (and secondary) metrics on test,
# base-to-novel's two, the primary metrics on val, then cost.
# Base-to-novel (CoCoOp's protocol, classification): test_top1 on the base classes, new_top1 on the new ones
# (runs.NEW_METRIC), hm_top1 = 2 * base * new / (base + new) of the row's means (as CoCoOp's tables), unless the
# runs report it. These three names are what results.json and the tables hold.
BASE_METRIC, NEW_METRIC, HM_METRIC = "test_top1", "new_top1", "hm_top1"
COST_METRICS = ("trainable_params", "train_seconds")
# Keys of a `paper:` block that are not methods.
PAPER_INFO_KEYS = {"source", "metric", "task"}


class Stat(NamedTuple):
    """Mean, sample standard deviation (ddof=1; 0 for a single value) and count of one metric in one row."""

    mean: float | None
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> "Stat":
        if not values:
            return cls(None, None, 0)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return cls(statistics.fmean(values), std, len(values))


@dataclass
class Row:
    """The runs that share one setting of the grouping keys."""

    group: dict[str, Any]
    stats: dict[str, Stat]
    runs: list[Run]
    paper: dict[str, float] = field(default_factory=dict)  # metric → the paper's reported number
    paper_source: str | None = None

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def seeds(self) -> list[Any]:
        return [run.seed for run in self.runs]


def numeric_results_keys(runs: Sequence[Run]) -> list[str]:
    keys: dict[str, None] = {}
    for run in runs:
        keys.update(dict.fromkeys(k for k, v in run.results.items() if as_number(v) is not None and k != "seed"))
    return list(keys)


def harmonic_mean(base: float | None, new: float | None) -> float | None:
    """HM = 2 * base * new / (base + new) (0 when both are 0); None when either is missing."""
    if base is None or new is None:
        return None
    return 2.0 * base * new / (base + new) if base + new else 0.0


def _derives_hm(runs: Sequence[Run]) -> bool:
    return all(any(run.metric(name) is not None for run in runs) for name in (BASE_METRIC, NEW_METRIC))


def _reported(runs: Sequence[Run], name: str) -> bool:
    return any(run.metric(name) is not None for run in runs) or (name == HM_METRIC and _derives_hm(runs))


def task_metrics(runs: Sequence[Run]) -> list[str]:
    """The metrics the runs' tasks rank by: each task's primary and secondary ones on test (test_top1; test_map,
    test_ap50), base-to-novel's new_top1 and hm_top1, then each primary one on val (val_top1, val_map)."""
    tasks = list({type(run.task): run.task for run in runs}.values())
    test = [name for task in tasks for name in (task.metric("test"),
                                                *(f"test_{m}" for m in task.secondary_metrics))]
    names = test + [NEW_METRIC, HM_METRIC] + [task.metric("val") for task in tasks]
    return list(dict.fromkeys(names))


def default_metrics(runs: Sequence[Run]) -> list[str]:
    """The task metrics (:func:`task_metrics`), the transfer targets' (:func:`transfer_metric_names`), trainable
    params and train time: those some run has."""
    names = [name for name in task_metrics(runs) if _reported(runs, name)]
    return names + transfer_metric_names(runs) + [name for name in COST_METRICS if _reported(runs, name)]


def transfer_metric_names(runs: Sequence[Run]) -> list[str]:
    """Cross-dataset / domain-generalisation targets (transfer_<name>_top1 from <run>/transfer/<name>), then their
    mean (runs.transfer_metrics)."""
    names = {key for run in runs for key in run.results
             if key.startswith("transfer_") and key.endswith("_top1") and key != TRANSFER_MEAN_METRIC}
    return sorted(names) + ([TRANSFER_MEAN_METRIC] if names else [])


def accuracy_metric(runs: Sequence[Run], preferred: Sequence[str] = ()) -> str | None:
    """The metric plots put on the accuracy axis: the first preferred one that is not a cost, else the default."""
    reported = [name for name in preferred if name not in COST_METRICS
                and any(run.metric(name) is not None for run in runs)]
    return next(iter(reported), None) or next((m for m in default_metrics(runs) if m not in COST_METRICS), None)


def _check_metrics(runs: Sequence[Run], metrics: Sequence[str]) -> None:
    missing = [name for name in metrics if not _reported(runs, name)]
    if missing:
        raise ConfigError(f"no run reports a number for {', '.join(missing)}; numeric results keys: "
                          f"{', '.join(numeric_results_keys(runs))}")


def _check_group_by(runs: Sequence[Run], group_by: Sequence[str]) -> None:
    unknown = [key for key in group_by if not any(run.has_setting(key) for run in runs)]
    if unknown:
        raise ConfigError(f"no run has the setting {', '.join(unknown)}; group by config keys such as "
                          f"{', '.join(varying_keys(runs) or ['prompt.method'])} or results keys "
                          "(method, dataset, backbone)")


def _paper_numbers(run: Run, metrics: Sequence[str]) -> tuple[dict[str, float], str | None]:
    """This run's method's numbers in its config's ``paper:`` block, keyed by the metric they report."""
    block = run.config.get("paper")
    if not isinstance(block, Mapping) or run.method not in block:
        return {}, None
    where = f"paper.{run.method} in {run.dir / 'config.yaml'}"
    reported = block[run.method]
    if reported is None:
        return {}, block.get("source")  # the paper has no number for this method
    if not isinstance(reported, Mapping):
        default = block.get("metric") or run.primary_metric("test")
        reported = {default: reported}
    numbers = {}
    for metric, value in reported.items():
        number = as_number(value)
        if number is None and value is not None:
            raise ConfigError(f"{where} must be a number or a mapping of metric to number, got {value!r}")
        if metric in metrics and number is not None:
            numbers[metric] = number
    return numbers, block.get("source")


def _sort_key(values: tuple) -> tuple:
    """Numbers in numeric order, then text, then missing values, whatever the mix of types."""
    return tuple((0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)
                 else (2, 0, "") if v is None else (1, 0, str(v)) for v in values)


def summarise(runs: Sequence[Run], metrics: Sequence[str] | None = None,
              group_by: Sequence[str] | None = None) -> list[Row]:
    """One row per setting of ``group_by`` (default: the keys that vary across runs, the seed excepted).

    Each row holds, for every metric (default :func:`default_metrics`), the mean, the sample standard
    deviation (ddof=1, 0 for one run) and n over its runs; runs missing a metric do not count towards its n.
    When the runs' config has a ``paper:`` block keyed by method, ``Row.paper`` holds the reported number.
    """
    if not runs:
        raise ConfigError("no completed runs to summarise; check the run directories hold results.json "
                          "with status completed")
    metrics = list(metrics) if metrics else default_metrics(runs)
    group_by = list(group_by) if group_by is not None else varying_keys(runs)
    _check_metrics(runs, metrics)
    _check_group_by(runs, group_by)
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(tuple(comparable(run.setting(key)) for key in group_by), []).append(run)
    rows = []
    for members in groups.values():
        members = sorted(members, key=lambda run: _sort_key((run.seed,)))
        stats = {name: Stat.of([v for v in (run.metric(name) for run in members) if v is not None])
                 for name in metrics}
        if HM_METRIC in stats and stats[HM_METRIC].n == 0:  # from the means, as CoCoOp's tables; no std
            base, new = (Stat.of([v for v in (run.metric(m) for run in members) if v is not None])
                         for m in (BASE_METRIC, NEW_METRIC))
            hm = harmonic_mean(base.mean, new.mean)
            stats[HM_METRIC] = Stat(hm, None, min(base.n, new.n)) if hm is not None else Stat(None, None, 0)
        row = Row(group={key: members[0].setting(key) for key in group_by}, stats=stats, runs=members)
        if len({run.method for run in members}) == 1:
            row.paper, row.paper_source = next(
                (found for found in (_paper_numbers(run, metrics) for run in members) if found[0] or found[1]),
                ({}, None))
        rows.append(row)
    return sorted(rows, key=lambda row: _sort_key(tuple(comparable(v) for v in row.group.values())))
