"""What a run prints: a progress bar per epoch and one-line metric summaries."""
from __future__ import annotations

from typing import Any, Iterable, Mapping


def progress_bar(total: int, description: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=description, leave=False, dynamic_ncols=True, disable=not enabled)


def format_metrics(metrics: Mapping[str, Any], keys: Iterable[str]) -> str:
    return "  ".join(f"{k} {metrics[k]:.4g}" for k in keys if isinstance(metrics.get(k), (int, float)))
