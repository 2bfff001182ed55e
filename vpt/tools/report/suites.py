"""Benchmark means beside the papers' ones: a preset suite (configs/experiment/vtab, fgvc) carries ``paper_means``
(task groups and the group means papers print, e.g. VPT's Table 1 Natural / Specialized / Structured or V-PETL
Bench's 19-task VTAB-1k mean); ``vpt-report`` averages the measured task means of each group, per method, and puts
the paper's mean beside it. A group is averaged only when every one of its tasks has runs of the method."""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Mapping, Sequence

import numpy as np

from .runs import Run


def suite_means(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """Rows ``{source, method, group, tasks, measured, paper}``: one per method with runs and group of a source."""
    per_task: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    blocks: dict[str, Mapping[str, Any]] = {}
    for run in runs:
        means, task = run.config.get("paper_means"), (run.config.get("paper") or {}).get("task")
        if not isinstance(means, Mapping) or task is None or run.method is None:
            continue
        key = str(means.get("suite"))
        blocks[key] = means
        value = run.metric(means.get("metric") or run.primary_metric("test"))
        if value is not None:
            per_task[(key, run.method)][task].append(value)
    rows = []
    for key, means in blocks.items():
        groups = means.get("groups", {})
        for source, numbers in (means.get("numbers") or {}).items():
            for method, by_group in numbers.items():
                tasks_run = per_task.get((key, method), {})
                if not tasks_run:
                    continue
                for group, paper in by_group.items():
                    tasks = groups.get(group, [])
                    have = [t for t in tasks if t in tasks_run]
                    measured = float(np.mean([np.mean(tasks_run[t]) for t in tasks])) if tasks and \
                        len(have) == len(tasks) else None
                    rows.append({"source": source, "method": method, "group": group,
                                 "tasks": f"{len(have)}/{len(tasks)}", "measured": measured, "paper": paper})
    return rows


def means_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return ""
    lines = ["| method | group | tasks with runs | measured mean | paper | source |", "|---|---|---|---|---|---|"]
    for row in rows:
        measured = "" if row["measured"] is None else f"{row['measured']:.2f}"
        lines.append(f"| {row['method']} | {row['group']} | {row['tasks']} | {measured} | {row['paper']:.2f} | "
                     f"{row['source']} |")
    return "\n".join(lines) + "\n"
