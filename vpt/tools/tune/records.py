"""What a tuning run was made from, and whether a run dir on disk can be reused, resumed or must be moved aside.

Each run dir holds ``tune_run.json``: the run's ``vpt-train`` arguments and the sha256 of a local backbone weights
file, if the run loads one. A run dir whose record matches is reused when it has ``results.json`` and resumed
(``trainer.resume=true``) otherwise; one made from other arguments or other weights is renamed to
``<name>.stale-<time>`` (never deleted) and the run starts afresh.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

from ...files import atomic_write_json
from ...run_files import RESULTS as RESULTS_FILE

RUN_RECORD = "tune_run.json"
REUSE, RESUME, START = "reused", "resumed", "started"
WEIGHTS_KEY = "backbone.pretrained"
WEIGHTS_PLACEHOLDER = "<weights file, see weights_sha256>"
# Settings that change where a run is watched or launched, never what it computes: left out of the record.
UNRECORDED_PREFIXES = ("hydra.", "hydra/", "logger.", "logger=", "trainer.progress_bar=", "trainer.resume=")


def override_key(arg: str) -> str:
    """``++optim.base_lr=2`` -> ``optim.base_lr``; ``prompt=deep`` -> ``prompt``."""
    return arg.lstrip("+~").split("=", 1)[0]


def is_launch_setting(arg: str) -> bool:
    """A Hydra setting (``hydra/launcher=joblib``, ``hydra.launcher.n_jobs=2``): how runs are launched."""
    return arg.lstrip("+~").startswith(("hydra.", "hydra/"))


def weights_file(pretrained: Any) -> Path | None:
    """The local weights file ``backbone.pretrained`` names, or None (random init, a hub tag, ``true``)."""
    from ...backbones.weights_spec import parse_weights  # here: importing vpt.backbones loads torch

    spec = parse_weights(pretrained)
    if not spec.is_file:
        return None
    path = Path(spec.path)
    return path if path.is_file() else None


def run_record(args: Sequence[str], weights_sha256: str | None) -> dict[str, Any]:
    """The record of a run: its result-changing arguments and its weights by digest. A weights path given on the
    command line is replaced by a placeholder, so a moved folder of weights (and runs) is still reused."""
    kept = []
    for arg in args:
        if arg.lstrip("+~").startswith(UNRECORDED_PREFIXES):
            continue
        if weights_sha256 is not None and override_key(arg) == WEIGHTS_KEY:
            arg = f"{WEIGHTS_KEY}={WEIGHTS_PLACEHOLDER}"
        kept.append(arg)
    return {"args": kept, "weights_sha256": weights_sha256}


def _read_json_object(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_record(run_dir: Path) -> dict[str, Any] | None:
    return _read_json_object(run_dir / RUN_RECORD)


def read_results(run_dir: Path) -> dict[str, Any] | None:
    return _read_json_object(run_dir / RESULTS_FILE)


def move_aside(run_dir: Path) -> Path:
    stale = run_dir.with_name(f"{run_dir.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
    while stale.exists():  # moved aside twice in one second
        stale = stale.with_name(stale.name + "+")
    os.replace(run_dir, stale)
    return stale


def prepare_run_dir(run_dir: Path, record: dict[str, Any]) -> str:
    """Decide what to do with ``run_dir`` for a run of ``record``: REUSE (finished, same record), RESUME (same
    record, unfinished) or START (new, or the old dir moved aside). The record is written before the run starts,
    so a run killed at any point afterwards is resumed rather than restarted."""
    same = read_record(run_dir) == record
    if same and (run_dir / RESULTS_FILE).is_file():
        return REUSE
    if run_dir.exists() and not same:
        stale = move_aside(run_dir)
        print(f"{run_dir} was made with other settings or weights: moved to {stale.name}", flush=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not same:
        atomic_write_json(run_dir / RUN_RECORD, record)
    return RESUME if same else START
