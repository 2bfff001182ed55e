"""Finding finished runs on disk and the config keys that set them apart.

A run directory (written by ``vpt-train``) holds ``results.json`` and the resolved ``config.yaml``; a Hydra
multirun directory holds numbered run directories. Files are only parsed (``json`` / ``yaml.safe_load``),
never executed.
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from ...errors import ConfigError, UnknownNameError
from ...run_files import CONFIG as CONFIG_FILE, NEW_CLASSES, RESULTS as RESULTS_FILE, TRACKER, TRANSFER
from ...tasks import Task, recorded_task

log = logging.getLogger(__name__)

COMPLETED = "completed"
# Folders that never hold a run of their own; skipping them keeps the walk fast on big sweeps.
NOT_RUN_FOLDERS = {TRACKER, "__pycache__"}
# Base-to-novel: vpt-eval of a run's prompt file on the new classes (data.subsample_classes=new), written to
# <run dir>/new; its primary test metric (test_top1) is the run's new_top1 (and the report's hm_top1), not a run
# of its own.
NEW_CLASSES_FOLDER = NEW_CLASSES
NEW_METRIC = "new_top1"
# Cross-dataset / domain generalisation: vpt-eval of a run's prompt file on another dataset, written to
# <run dir>/transfer/<name> (vpt-tune's tune.eval_on); its test_top1 is the run's transfer_<name>_top1, and the
# mean over the targets the run's transfer_mean_top1.
TRANSFER_FOLDER = TRANSFER
TRANSFER_MEAN_METRIC = "transfer_mean_top1"
# Config keys that do not describe the experiment: where files went, how the run was watched or resumed.
IGNORED_KEYS = {"seed", "output_dir", "trainer.resume", "trainer.progress_bar"}
IGNORED_PREFIXES = ("hydra.", "paths.", "logger.", "paper.", "paper_means.", "tune.", "vpt_recipe.",
                    "coop_recipe.")  # not settings of a run
# Labels derived from other keys (name: ${prompt.method}_${data.name}); kept only when they tell runs apart.
LABEL_KEYS = ("name",)


class NoResultsError(ConfigError):
    """A path given to the report holds no ``results.json`` anywhere below it."""


@dataclass
class Run:
    """One finished (or unfinished) training run: its folder, ``results.json`` and nested ``config.yaml``."""

    dir: Path
    results: dict[str, Any]
    config: dict[str, Any]
    flat_config: dict[str, Any] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.flat_config = flatten(self.config)

    @property
    def status(self) -> str:
        # vpt-eval writes results.json, without a status, only once it has finished
        return str(self.results.get("status", COMPLETED))

    @property
    def seed(self) -> Any:
        return self.results.get("seed", self.config.get("seed"))

    @property
    def method(self) -> str | None:
        return self.results.get("method") or self.flat_config.get("prompt.method")

    def setting(self, key: str) -> Any:
        """A config value by dotted key, else a top-level results value (``method``, ``dataset``), else None."""
        if key in self.flat_config:
            return self.flat_config[key]
        value = self.results.get(key)
        return None if isinstance(value, (dict, list)) else value

    def has_setting(self, key: str) -> bool:
        return key in self.flat_config or (key in self.results and not isinstance(self.results[key], (dict, list)))

    def metric(self, name: str) -> float | None:
        """A numeric results value; ``"nan"`` / ``"inf"`` (how results.json stores them) become floats."""
        return as_number(self.results.get(name))

    @cached_property
    def task(self) -> Task:
        """The task the run was of (what its results.json or config.yaml records): it says the primary metric."""
        return task_of(self.results, self.config, self.dir)

    def primary_metric(self, split: str = "test") -> str:
        """The key of the run's primary metric on ``split``: ``test_top1``, ``test_map``."""
        return self.task.metric(split)


def task_of(results: Mapping[str, Any], config: Mapping[str, Any], where: Path) -> Task:
    try:
        return recorded_task(results, config)
    except UnknownNameError as error:  # a user's task class not importable here: the base task's metric
        log.warning("%s: %s; reporting its %s", where, error, Task().metric("test"))
        return Task()


class RunList(list):
    """The runs found, plus the unfinished or unreadable ones that were left out (``skipped``: folder → reason)."""

    def __init__(self, runs: Iterable[Run] = (), skipped: Mapping[Path, str] | None = None) -> None:
        super().__init__(runs)
        self.skipped: dict[Path, str] = dict(skipped or {})

    def skipped_summary(self) -> str:
        """``"3 runs skipped (failed: 2, unreadable: 1)"``, or an empty string when none were."""
        if not self.skipped:
            return ""
        counts = Counter(self.skipped.values())
        reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(counts.items()))
        return f"{len(self.skipped)} run{'s' if len(self.skipped) != 1 else ''} skipped ({reasons})"


def as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None  # flags such as val_in_train are not measurements
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value.strip().lower() in {"nan", "inf", "-inf", "infinity", "-infinity"}:
        return float(value)
    return None


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"prompt": {"length": 10}}`` → ``{"prompt.length": 10}``; lists stay whole values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def comparable(value: Any) -> Any:
    """A hashable stand-in for a config value (lists and mappings compared by content)."""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, sort_keys=True, default=str)
    if isinstance(value, float) and math.isnan(value):
        return "nan"  # nan != nan would make every nan its own group
    return value


def _walk(root: Path) -> tuple[list[Path], list[Path]]:
    """The results.json files below root, and the run folders without one (config.yaml only: killed runs)."""
    if root.is_file():
        return ([root] if root.name == RESULTS_FILE else []), []
    found, unfinished = [], []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith(".") and d not in NOT_RUN_FOLDERS)
        if RESULTS_FILE in files:
            found.append(Path(folder) / RESULTS_FILE)
            # evaluations of the run's prompt file: read with the run (read_run), not runs of their own
            subfolders[:] = [d for d in subfolders if d not in (NEW_CLASSES_FOLDER, TRANSFER_FOLDER)]
        elif CONFIG_FILE in files:  # vpt-train writes config.yaml first, results.json last
            unfinished.append(Path(folder))
    return found, unfinished


def _config_from_results(results: Mapping[str, Any]) -> dict[str, Any]:
    """What results.json alone says about the setting, for a run whose config.yaml is gone."""
    config: dict[str, Any] = {"seed": results.get("seed")}
    if isinstance(results.get("prompt"), Mapping):
        config["prompt"] = dict(results["prompt"])
    for section in ("backbone", "dataset"):
        if results.get(section) is not None:
            config["data" if section == "dataset" else section] = {"name": results[section]}
    return config


def _read_mapping(path: Path, parse) -> dict[str, Any] | None:
    try:
        data = parse(path.read_text())
    except (OSError, ValueError, yaml.YAMLError) as error:  # json.JSONDecodeError is a ValueError
        log.warning("cannot read %s (%s); skipping this run", path, error)
        return None
    return data if isinstance(data, dict) else None


def read_run(results_path: Path) -> Run | None:
    """The run whose ``results.json`` this is, or None when it (or its config.yaml) cannot be parsed."""
    results = _read_mapping(results_path, json.loads)
    if results is None:
        return None
    config_path = results_path.with_name(CONFIG_FILE)
    if config_path.is_file():
        config = _read_mapping(config_path, yaml.safe_load)
        if config is None:
            return None
    else:
        config = _config_from_results(results)
    new_path = results_path.parent / NEW_CLASSES_FOLDER / RESULTS_FILE
    if NEW_METRIC not in results and new_path.is_file():
        new = _read_mapping(new_path, json.loads) or {}
        new_metric = task_of(new, {}, new_path.parent).metric("test")
        if as_number(new.get(new_metric)) is not None:
            results = {**results, NEW_METRIC: new[new_metric]}
    results = {**results, **transfer_metrics(results_path.parent / TRANSFER_FOLDER)}
    return Run(dir=results_path.parent, results=results, config=config)


def transfer_metrics(folder: Path) -> dict[str, float]:
    """transfer_<name>_top1 of each <folder>/<name>/results.json (its test_top1), and their mean."""
    found = {}
    for path in sorted(folder.glob(f"*/{RESULTS_FILE}")) if folder.is_dir() else []:
        value = as_number((_read_mapping(path, json.loads) or {}).get("test_top1"))
        if value is not None:
            found[f"{TRANSFER_FOLDER}_{path.parent.name}_top1"] = value
    if found:
        found[TRANSFER_MEAN_METRIC] = sum(found.values()) / len(found)
    return found


def collect_runs(paths: Sequence[str | os.PathLike] | str | os.PathLike) -> RunList:
    """Every completed run under the given run or sweep directories (or ``results.json`` files).

    Runs whose status is not ``completed`` (failed), that have no results.json yet (killed or still running)
    or whose files cannot be parsed are left out and recorded in ``RunList.skipped`` (folder → reason).
    A path with no run anywhere below it raises :class:`NoResultsError`.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    runs: dict[Path, Run] = {}
    skipped: dict[Path, str] = {}
    for given in paths:
        root = Path(given)
        if not root.exists():
            raise NoResultsError(f"{root} does not exist; pass a run directory written by vpt-train or a sweep "
                                 "directory that holds run directories")
        files, unfinished = _walk(root)
        skipped.update((folder.resolve(), "unfinished") for folder in unfinished)
        if not files and not unfinished:
            raise NoResultsError(f"no {RESULTS_FILE} under {root}; pass a run directory written by vpt-train "
                                 f"(or a sweep directory that holds them), and check the runs finished")
        for results_path in files:
            folder = results_path.parent.resolve()
            if folder in runs or folder in skipped:
                continue  # the same run reached through two of the given paths
            run = read_run(results_path)
            if run is None:
                skipped[folder] = "unreadable"
            elif run.status != COMPLETED:
                skipped[folder] = run.status
            else:
                runs[folder] = run
    found = RunList(sorted(runs.values(), key=lambda run: str(run.dir)), skipped)
    if found.skipped:
        log.warning("%s", found.skipped_summary())
    return found


def _ignored(key: str) -> bool:
    return key in IGNORED_KEYS or key.startswith(IGNORED_PREFIXES) or key.endswith("_dir")


def _partition(runs: Sequence[Run], keys: Sequence[str]) -> set[tuple]:
    return {tuple(comparable(run.setting(key)) for key in keys) for run in runs}


def varying_keys(runs: Sequence[Run]) -> list[str]:
    """Flattened config keys whose values differ across runs, in config order.

    Left out: the seed, output folders, timestamps and Hydra/logger/path settings (they do not describe the
    experiment), and a label such as ``name`` when the other keys already tell the runs apart.
    """
    keys: dict[str, None] = {}
    for run in runs:
        keys.update(dict.fromkeys(run.flat_config))
    varying = [key for key in keys if not _ignored(key)
               and len({comparable(run.flat_config.get(key)) for run in runs}) > 1]
    settings = [key for key in varying if key not in LABEL_KEYS]
    for label in (key for key in varying if key in LABEL_KEYS):
        if len(_partition(runs, settings + [label])) == len(_partition(runs, settings)):
            varying.remove(label)
    return varying
