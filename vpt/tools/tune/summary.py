"""What a tuning writes: ``tune.json`` (every score, the pick, every final result) and, through vpt-report, the
final table (test mean ± std over seeds, the paper's numbers beside it) and the stage-1 table and plots."""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Sequence

from ...errors import ConfigError
from ...files import atomic_write_json
from ...tasks import recorded_task
from .grid import at_edge, best_point
from .launch import TrainRun
from .result import TuneResult

TUNE_FILE = "tune.json"
SEARCH_FOLDER = "search"


def _scalars(results: dict[str, Any] | None) -> dict[str, Any]:
    return {key: value for key, value in (results or {}).items() if not isinstance(value, (dict, list))}


def summary_of(result: TuneResult) -> dict[str, Any]:
    """The contents of tune.json. Run dirs are relative to the tune dir, so the folder can move."""
    by_point = {run.point: run for run in result.search_runs}
    test = final_test_metric(result)
    tests = [run.results[test] for run in result.final_runs if isinstance((run.results or {}).get(test), (int, float))]
    return {
        "grid": result.grid.to_dict(),
        "metric": result.metric,
        "search": [{"setting": result.grid.as_dict(point), "score": score,
                    "status": (by_point[point].results or {}).get("status") if point in by_point else None,
                    "run_dir": by_point[point].label if point in by_point else None}
                   for point, score in result.scores.items()],
        "pick": result.pick_settings,
        "pick_is_best_of_search": (bool(result.scores) and result.pick is not None
                                   and best_point(result.grid, result.scores) == result.pick),
        "pick_at_edge": at_edge(result.grid, result.scores) if result.scores else [],
        "final": [{"seed": run.seed, "run_dir": run.label, **_scalars(run.results)} for run in result.final_runs],
        f"{test}_mean": statistics.fmean(tests) if tests else None,
        f"{test}_std": statistics.stdev(tests) if len(tests) > 1 else (0.0 if tests else None),
    }


def final_test_metric(result: TuneResult) -> str:
    """The final runs' primary test metric (test_top1, test_map): of the task their results.json records."""
    recorded = next((run.results for run in result.final_runs if run.results), {})
    return recorded_task(recorded).metric("test")


def _report(runs: Sequence[TrainRun], out: Path, group_by: list[str], metrics: list[str] | None,
            plots: bool) -> list:
    """vpt-report's table (and plots) of ``runs`` into ``out``; returns the table rows."""
    from ..report import collect_runs, summarise, write_plots, write_tables

    found = collect_runs([run.dir for run in runs])
    if not found:
        print(f"no completed run among {len(runs)} in {out}: no table ({found.skipped_summary()})", flush=True)
        return []
    rows = summarise(found, metrics, group_by)
    write_tables(rows, out, skipped=found.skipped)
    if plots:
        try:
            write_plots(found, out, group_by, metrics[0] if metrics else None)
        except ConfigError as error:  # matplotlib missing: the tables are enough
            print(f"no plots: {error}", flush=True)
    return rows


def write_reports(result: TuneResult) -> None:
    """tune.json first (it never depends on the reports), then the stage-1 and final tables."""
    from ..report import to_markdown

    atomic_write_json(result.out / TUNE_FILE, summary_of(result))
    keys = result.grid.keys
    if result.search_runs:
        _report(result.search_runs, result.out / SEARCH_FOLDER, keys, [result.metric], plots=True)
    result.rows = _report(result.final_runs, result.out, keys, None, plots=False)
    if result.pick_settings is None:
        seeds = len(result.final_runs) // max(1, len(result.grid.points()))
        head = f"\n{len(result.final_runs)} runs: every {', '.join(keys)} x {seeds} seeds (no search)"
    else:
        picked = ", ".join(f"{key}={value}" for key, value in result.pick_settings.items())
        head = f"\npick: {picked}  ({len(result.final_runs)} seeds)"
    print(head + "\n" + to_markdown(result.rows), flush=True)
    print(f"wrote {result.out / 'table.md'} and {result.out / TUNE_FILE}", flush=True)
