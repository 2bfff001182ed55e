"""What a run prints: a progress bar per epoch (or plain lines in logs) and one-line metric summaries."""
from __future__ import annotations

import logging
import sys
import time
from typing import Any, Iterable, Mapping

from ..errors import ConfigError

log = logging.getLogger("vpt.progress")

PROGRESS_MODES = ("auto", "true", "false", "bar", "lines")
PLAIN_LINE_SECONDS = 30.0  # a redirected log gets at most one progress line this often (plus the epoch summary)


def progress_mode(setting: Any, stream=None) -> str:
    """``trainer.progress_bar`` -> ``bar`` (tqdm), ``lines`` (plain log lines) or ``off``.

    ``auto``: a bar when stderr is a terminal, else plain lines, so a log redirected to a file holds no
    carriage-return frames. ``true`` forces the bar, ``false`` turns progress off.
    """
    value = str(setting).lower() if setting is not None else "false"
    if value not in PROGRESS_MODES:
        raise ConfigError(f"trainer.progress_bar={setting!r}; valid: auto, true, false, lines")
    if value == "auto":
        stream = sys.stderr if stream is None else stream
        return "bar" if _is_terminal(stream) else "lines"
    return {"true": "bar", "false": "off"}.get(value, value)


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or file-less stream
        return False


def progress_bar(total: int, description: str, enabled: Any = "auto"):
    """An object with tqdm's ``set_postfix`` / ``update`` / ``close``: a tqdm bar, or plain log lines."""
    mode = progress_mode(enabled)
    if mode == "lines":
        return PlainProgress(total, description)
    from tqdm import tqdm

    return tqdm(total=total, desc=description, leave=False, dynamic_ncols=True, disable=mode == "off")


class PlainProgress:
    """Progress as ordinary log lines, at most one per ``every_seconds`` (none for an epoch shorter than that)."""

    def __init__(self, total: int, description: str, every_seconds: float = PLAIN_LINE_SECONDS) -> None:
        self.total, self.description, self.every_seconds = total, description, every_seconds
        self.done = 0
        self.postfix: dict[str, Any] = {}
        self.last_line = time.monotonic()

    def set_postfix(self, values: Mapping[str, Any] | None = None, refresh: bool = True, **more: Any) -> None:
        self.postfix = {**(values or {}), **more}

    def update(self, steps: int = 1) -> None:
        self.done += steps
        now = time.monotonic()
        if now - self.last_line >= self.every_seconds and self.done < self.total:
            self.last_line = now
            log.info("%s", self.line())

    def line(self) -> str:
        details = "  ".join(f"{key} {value}" for key, value in self.postfix.items())
        return f"{self.description}: {self.done}/{self.total} steps  {details}".rstrip()

    def close(self) -> None:
        """Nothing to clear: the epoch summary line follows."""


def format_metrics(metrics: Mapping[str, Any], keys: Iterable[str]) -> str:
    return "  ".join(f"{k} {metrics[k]:.4g}" for k in keys if isinstance(metrics.get(k), (int, float)))
