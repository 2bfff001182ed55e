"""The names of the files and folders in a run directory, in one place.

``vpt-train`` writes them (:mod:`vpt.engine`, the tasks), ``vpt-eval`` writes the evaluation ones into its own
output dir, ``vpt-report`` and ``vpt-tune`` read them, and ``trainer.overwrite=true`` moves every one of them
aside (:func:`vpt.files.check_run_dir`): an output named here is never left behind to be mixed with a new run's.
"""
from __future__ import annotations

import os
from pathlib import Path

CONFIG = "config.yaml"  # the resolved config: written first
RESULTS = "results.json"  # the final summary: written last, so it marks a finished run
METRICS_JSONL, METRICS_CSV = "metrics.jsonl", "metrics.csv"  # one row per epoch
BEST, LAST = "best", "last"  # prompt files (vpt.prompt_file)
RESUME_STATE = "resume"  # resume.safetensors + resume.json (vpt.files.save_state)
RESUME_FILES = (f"{RESUME_STATE}.safetensors", f"{RESUME_STATE}.json")
LEGACY_RESUME = "resume.pt"  # vpt < 0.2's pickle: never read, but still another run's state
PREDICTIONS_PREFIX = "predictions_"  # a task's per-split predictions (detection: COCO results + drawn images)
NEW_CLASSES = "new"  # base-to-novel: vpt-eval of best/ on the new classes, in the run dir (vpt-tune)
TRANSFER = "transfer"  # cross-dataset / domain generalisation: transfer/<name>/, vpt-eval of best/ (tune.eval_on)
EVAL_ARGS = "eval_args.json"  # the vpt-eval overrides an evaluation folder (new/, transfer/<name>/) was made with
TRACKER = "wandb"  # the experiment tracker's own files (vpt.loggers)
HYDRA = ".hydra"  # Hydra's record of the command line (written by Hydra for each run, so never moved)
LOCK = ".vpt.lock"  # vpt.files.RunLock
LATEST_LINK = "latest"  # <run dir's parent>/latest -> the newest run of that name
REPLACED_PREFIX = "replaced-"  # trainer.overwrite's folder for the runs it moved aside

#: A run dir holding any of these has a run's results: a new run there must resume or overwrite
RESULT_NAMES = (RESULTS, BEST, LAST, LEGACY_RESUME, *RESUME_FILES, METRICS_JSONL, METRICS_CSV)
#: Not results by themselves, but made by the run (or from its results): moved aside with them
MADE_WITH_RESULTS = (CONFIG, NEW_CLASSES, TRANSFER, TRACKER)


def predictions_file(split: str) -> str:
    return f"{PREDICTIONS_PREFIX}{split}.json"


def predictions_folder(split: str) -> str:
    return f"{PREDICTIONS_PREFIX}{split}"


def run_outputs(run_dir: str | os.PathLike) -> list[str]:
    """Every output of a run found in ``run_dir`` (results first), by name: what ``trainer.overwrite`` moves."""
    run_dir = Path(run_dir)
    named = [name for name in (*RESULT_NAMES, *MADE_WITH_RESULTS) if (run_dir / name).exists()]
    predictions = sorted(p.name for p in run_dir.glob(f"{PREDICTIONS_PREFIX}*")) if run_dir.is_dir() else []
    return named + predictions
