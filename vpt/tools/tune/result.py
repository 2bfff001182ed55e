"""What one tuning produced (the scores, the pick, the runs): the protocol fills it, the summary writes it."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .grid import Grid, Point
from .launch import TrainRun


@dataclass
class TuneResult:
    out: Path
    grid: Grid
    metric: str
    scores: dict[Point, float | None]
    pick: Point | None  # None: tune.search=false over several points (each one trained, none picked)
    search_runs: list[TrainRun]
    final_runs: list[TrainRun]
    rows: list = field(default_factory=list)  # vpt.tools.report rows of the final table

    @property
    def pick_settings(self) -> dict[str, Any] | None:
        return self.grid.as_dict(self.pick) if self.pick is not None else None

    @property
    def final_results(self) -> list[dict[str, Any]]:
        return [run.results or {} for run in self.final_runs]
