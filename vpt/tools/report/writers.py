"""The summary table as markdown (for READMEs and the console), CSV (spreadsheets) and JSON (scripts)."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ...errors import ConfigError
from ...loggers import write_atomic, write_json
from .table import Row

FORMATS = {"md": "table.md", "csv": "table.csv", "json": "table.json"}
MISSING = "–"


def _metrics(rows: Sequence[Row]) -> list[str]:
    return list(rows[0].stats) if rows else []


def _paper_metrics(rows: Sequence[Row]) -> set[str]:
    return {metric for row in rows for metric in row.paper}


def _sources(rows: Sequence[Row]) -> list[str]:
    return list(dict.fromkeys(str(row.paper_source) for row in rows if row.paper_source))


def _setting_text(value: Any) -> str:
    if value is None:
        return MISSING
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _decimals(rows: Sequence[Row], metric: str) -> int:
    """0 for counts (results.json holds integers, e.g. parameters), else 2."""
    values = [run.results.get(metric) for row in rows for run in row.runs if run.metric(metric) is not None]
    return 0 if values and all(isinstance(value, int) for value in values) else 2  # none: derived (hm_top1)


def _number(value: float | None, decimals: int) -> str:
    if value is None:
        return MISSING
    return f"{value:,.{decimals}f}" if math.isfinite(value) else str(value)


def _cell(row: Row, metric: str, decimals: int) -> str:
    stat = row.stats[metric]
    text = _number(stat.mean, decimals)
    if stat.n > 1 and stat.std:  # a constant (one run, or every run equal) needs no ± 0
        text += f" ± {_number(stat.std, decimals)}"
    if 0 < stat.n < row.n:
        text += f" (n={stat.n})"
    return text


def to_markdown(rows: Sequence[Row]) -> str:
    """A markdown table: the grouping keys, n, then ``mean ± std`` per metric and the paper's number beside it."""
    if not rows:
        return "(no runs)\n"
    group_by, metrics, paper_metrics = list(rows[0].group), _metrics(rows), _paper_metrics(rows)
    header = group_by + ["n"]
    for metric in metrics:
        header += [metric] + (["paper"] if metric in paper_metrics else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    decimals = {metric: _decimals(rows, metric) for metric in metrics}
    for row in rows:
        cells = [_setting_text(row.group[key]) for key in group_by] + [str(row.n)]
        for metric in metrics:
            cells.append(_cell(row, metric, decimals[metric]))
            if metric in paper_metrics:
                cells.append(_number(row.paper.get(metric), decimals[metric]))
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    lines += ["", ("mean ± sample standard deviation (ddof=1) over the n runs of a row; "
                   "a value without ± is the same in every run of its row.")]
    lines += [f"paper: {source}" for source in _sources(rows)]
    return "\n".join(lines) + "\n"


def _flat_row(row: Row, paper_metrics: set[str]) -> dict[str, Any]:
    flat: dict[str, Any] = {key: value if not isinstance(value, (list, dict)) else json.dumps(value)
                            for key, value in row.group.items()}
    flat["n"] = row.n
    flat["seeds"] = " ".join(str(seed) for seed in row.seeds)
    for metric, stat in row.stats.items():
        flat.update({f"{metric}_mean": stat.mean, f"{metric}_std": stat.std, f"{metric}_n": stat.n})
        if metric in paper_metrics:
            flat[f"{metric}_paper"] = row.paper.get(metric)
    if paper_metrics:
        flat["paper_source"] = row.paper_source
    return flat


def to_csv(rows: Sequence[Row]) -> str:
    """One line per row: grouping keys, n, seeds, then ``<metric>_mean/_std/_n`` (and ``_paper``)."""
    paper_metrics = _paper_metrics(rows)
    flat_rows = [_flat_row(row, paper_metrics) for row in rows]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(flat_rows[0]) if flat_rows else [], lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat_rows)
    return buffer.getvalue()


def to_json(rows: Sequence[Row], skipped: Mapping[Path, str] | None = None) -> dict[str, Any]:
    """The table as a JSON-ready mapping, with every run folder of each row and the runs that were skipped."""
    return {
        "group_by": list(rows[0].group) if rows else [],
        "metrics": _metrics(rows),
        "rows": [{
            "group": row.group,
            "n": row.n,
            "seeds": row.seeds,
            "metrics": {metric: {**stat._asdict(), **({"paper": row.paper[metric]} if metric in row.paper else {})}
                        for metric, stat in row.stats.items()},
            "paper_source": row.paper_source,
            "runs": [str(run.dir) for run in row.runs],
        } for row in rows],
        "skipped": {str(folder): reason for folder, reason in (skipped or {}).items()},
    }


def parse_formats(text: str | Iterable[str]) -> list[str]:
    """``"md,csv"`` → ``["md", "csv"]``; an unknown name is a ConfigError listing the valid ones."""
    names = [part.strip() for part in (text.split(",") if isinstance(text, str) else text) if part.strip()]
    unknown = [name for name in names if name not in FORMATS]
    if unknown:
        raise ConfigError(f"unknown table format {', '.join(unknown)}; valid formats: {', '.join(FORMATS)} "
                          "(comma-separated, e.g. --format md,csv)")
    return list(dict.fromkeys(names))


def write_tables(rows: Sequence[Row], out_dir: str | Path, formats: Iterable[str] = tuple(FORMATS),
                 skipped: Mapping[Path, str] | None = None) -> list[Path]:
    """Write ``table.md`` / ``table.csv`` / ``table.json`` into ``out_dir`` (each atomically); return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in parse_formats(formats):
        path = out / FORMATS[name]
        if name == "json":
            write_json(path, to_json(rows, skipped))
        else:
            write_atomic(path, to_markdown(rows) if name == "md" else to_csv(rows))
        written.append(path)
    return written
