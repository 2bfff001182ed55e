"""Where a run's numbers go: files in the run dir (always) and an optional experiment tracker (wandb).

The run-dir files are the record of truth: ``metrics.jsonl`` / ``metrics.csv`` (one row per epoch) and
``results.json`` (the final summary). A tracker is a convenience on top; if it fails, the run warns and
goes on, so results are never lost to a tracker outage or a missing login.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

log = logging.getLogger(__name__)


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file + rename, so a killed process never leaves a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN / inf
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    write_atomic(path, json.dumps(_json_safe(data), indent=2, default=str) + "\n")


class RunFiles:
    """The files every run writes into its output directory."""

    def __init__(self, output_dir: str | os.PathLike) -> None:
        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = self.dir / "config.yaml"
        self.metrics_jsonl = self.dir / "metrics.jsonl"
        self.metrics_csv = self.dir / "metrics.csv"
        self.results = self.dir / "results.json"
        self.resume_state = self.dir / "resume.pt"
        self.best = self.dir / "best"
        self.last = self.dir / "last"

    def write_history(self, history: Sequence[Mapping[str, Any]]) -> None:
        """Rewrite both metric files from the full history (small), so a resumed run never duplicates rows."""
        write_atomic(self.metrics_jsonl, "".join(json.dumps(_json_safe(row)) + "\n" for row in history))
        columns: list[str] = []
        for row in history:
            columns += [key for key in row if key not in columns and not isinstance(row[key], (list, dict))]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)
        write_atomic(self.metrics_csv, buffer.getvalue())

    def write_results(self, results: Mapping[str, Any]) -> None:
        write_json(self.results, results)


class Tracker:
    """No-op experiment tracker (``logger=csv`` / ``logger=none``): the run-dir files are the whole record."""

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        pass

    def log_summary(self, results: Mapping[str, Any]) -> None:
        pass

    def finish(self, failed: bool = False) -> None:
        pass


class WandbLogger(Tracker):
    """Weights & Biases tracker; offline by default (files under ``<run dir>/wandb``, upload with ``wandb sync``).

    Every wandb call is guarded: on the first failure the tracker logs a warning and switches itself off.
    """

    def __init__(self, run_dir: str | os.PathLike, name: str, run_config: Mapping[str, Any], project: str = "vpt",
                 entity: str | None = None, group: str | None = None, tags: Sequence[str] = (),
                 mode: str = "offline") -> None:
        self.run = None
        try:
            import wandb

            self.run = wandb.init(project=project, entity=entity, group=group, tags=list(tags), name=name,
                                  mode=mode, dir=str(run_dir), config=dict(run_config), reinit="finish_previous",
                                  settings=wandb.Settings(silent=True, console="off"))
        except Exception as error:  # wandb raises many kinds (UsageError without a login, network errors, ...)
            self._disable("start", error)

    def _disable(self, action: str, error: BaseException) -> None:
        log.warning("wandb could not %s (%s: %s); continuing without it, results are still written to the run dir",
                    action, type(error).__name__, error)
        self.run = None

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        if self.run is None:
            return
        try:
            self.run.log({k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}, step=step)
        except Exception as error:
            self._disable("log metrics", error)

    def log_summary(self, results: Mapping[str, Any]) -> None:
        if self.run is None:
            return
        try:
            self.run.summary.update({k: v for k, v in results.items() if not isinstance(v, (list, dict))})
        except Exception as error:
            self._disable("write the summary", error)

    def finish(self, failed: bool = False) -> None:
        if self.run is None:
            return
        try:
            self.run.finish(exit_code=1 if failed else 0)
        except Exception as error:
            self._disable("finish", error)
