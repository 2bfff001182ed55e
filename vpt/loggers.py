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
import os
import secrets
import shlex
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import run_files
from .files import atomic_write, atomic_write_json, json_safe

log = logging.getLogger(__name__)


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file + rename (:func:`vpt.files.atomic_write`): a crash never leaves half a file."""
    atomic_write(path, text)


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    atomic_write_json(path, data)


class RunFiles:
    """The files every run writes into its output directory."""

    def __init__(self, output_dir: str | os.PathLike) -> None:
        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = self.dir / run_files.CONFIG
        self.metrics_jsonl = self.dir / run_files.METRICS_JSONL
        self.metrics_csv = self.dir / run_files.METRICS_CSV
        self.results = self.dir / run_files.RESULTS
        self.best = self.dir / run_files.BEST
        self.last = self.dir / run_files.LAST

    def write_history(self, history: Sequence[Mapping[str, Any]]) -> None:
        """Rewrite both metric files from the full history (small), so a resumed run never duplicates rows."""
        write_atomic(self.metrics_jsonl, "".join(json.dumps(json_safe(row)) + "\n" for row in history))
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


# ---- what Hydra knows about a run (sweep, overrides, chosen options), for the tracker's labels ------------------
#: Overrides that do not change what a run computes; left out of run names
NAME_IGNORED_KEYS = ("logger", "trainer.resume", "trainer.progress_bar", "output_dir", "experiment", "hydra")
MAX_TAG_LENGTH = 64  # wandb rejects longer tags
RUN_ID_FILE = "vpt_run_id"  # under <run dir>/wandb: the id a resumed run continues


@dataclass
class HydraRunInfo:
    """A run's place in Hydra: part of a sweep (and which keys it sweeps), its overrides, its chosen options."""

    multirun: bool = False
    sweep_dir: Path | None = None
    overrides: list[str] = field(default_factory=list)
    swept_keys: set[str] = field(default_factory=set)
    choices: dict[str, Any] = field(default_factory=dict)


def _load_yaml(path: Path) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.load(path) if path.is_file() else None


def _select(config: Any, key: str) -> Any:
    """A value of a (possibly unresolvable, file-loaded) Hydra config; None where it cannot be resolved."""
    from omegaconf import OmegaConf

    if config is None:
        return None
    return OmegaConf.select(config, key, default=None, throw_on_resolution_failure=False)


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _sweep_keys(sweep_dir: Path | None, hydra_cfg: Any) -> set[str]:
    """Keys a sweep varies: sweep overrides (``a=1,2``, ``range(...)``) of the sweep's command line + sweeper params."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = set(_select(hydra_cfg, "sweeper.params") or {})
    sweep = _load_yaml(sweep_dir / "multirun.yaml") if sweep_dir else None  # written by Hydra's basic sweeper
    command_line = list(_select(sweep, "hydra.overrides.task") or []) if sweep is not None else []
    overrides = OverridesParser.create().parse_overrides(command_line)
    return keys | {o.key_or_group for o in overrides if o.is_sweep_override()}


def read_hydra_run_info(run_dir: str | os.PathLike) -> HydraRunInfo:
    """From the live HydraConfig when there is one, else from the files Hydra saved in ``<run_dir>/.hydra``."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    run_dir = Path(run_dir)
    saved = run_dir / run_files.HYDRA
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else _select(_load_yaml(saved / "hydra.yaml"), "hydra")
    if hydra_cfg is None:
        return HydraRunInfo(overrides=[str(o) for o in _load_yaml(saved / "overrides.yaml") or []])
    multirun = str(_select(hydra_cfg, "mode")).rpartition(".")[2] == "MULTIRUN"
    sweep_dir = None
    if multirun:
        resolved = _select(hydra_cfg, "sweep.dir")
        ancestors = [d for d in run_dir.resolve().parents if (d / "multirun.yaml").is_file()]
        sweep_dir = Path(resolved) if resolved and "${" not in str(resolved) else (ancestors or [run_dir.parent])[0]
    choices = _select(hydra_cfg, "runtime.choices")
    return HydraRunInfo(multirun=multirun, sweep_dir=sweep_dir,
                        overrides=[str(o) for o in _select(hydra_cfg, "overrides.task") or []],
                        swept_keys=_sweep_keys(sweep_dir, hydra_cfg) if multirun else set(),
                        choices=OmegaConf.to_container(choices) if choices is not None else {})


@dataclass
class RunLabels:
    group: str
    name: str
    tags: list[str]


def run_labels(run_dir: str | os.PathLike, name: str, run_config: Mapping[str, Any], group: str | None = None,
               tags: Sequence[str] = ()) -> RunLabels:
    """Tracker labels of a run: group = its sweep (multirun) or experiment, name = base name + the overrides that
    vary, tags = the chosen backbone, prompt method, dataset and task (+ ``tags``).

    Labels are a convenience: if Hydra's files cannot be read, the run is labelled by ``name`` alone.
    """
    try:
        info = read_hydra_run_info(run_dir)
    except Exception as error:  # a damaged .hydra folder must not stop the run
        log.warning("could not read Hydra's record of %s (%s); wandb labels use the run name only", run_dir, error)
        info = HydraRunInfo()
    experiment = info.choices.get("experiment")
    if group is None:
        group = info.sweep_dir.name if info.multirun and info.sweep_dir else experiment or name
    ignored = lambda key: key.startswith(NAME_IGNORED_KEYS)  # noqa: E731
    varying = [o for o in info.overrides if not ignored(_override_key(o))]
    if info.multirun and info.swept_keys:
        varying = [o for o in varying if _override_key(o) in info.swept_keys]
    full_name = f"{name} {','.join(varying)}" if varying else name

    def config_value(*keys: str) -> Any:
        value: Any = run_config
        for key in keys:
            value = value.get(key) if isinstance(value, Mapping) else None
        return value

    chosen = {"backbone": config_value("backbone", "name"), "prompt": config_value("prompt", "method"),
              "data": config_value("data", "name"), "task": info.choices.get("task") or config_value("task", "head"),
              "experiment": experiment}
    derived = [f"{kind}:{value}" for kind, value in chosen.items() if value]
    all_tags = list(dict.fromkeys(str(tag)[:MAX_TAG_LENGTH] for tag in [*tags, *derived]))
    return RunLabels(group=str(group), name=full_name, tags=all_tags)


def _run_id(run_dir: Path, resume: bool) -> str:
    """The id a resumed run continues (stored in the run dir); a fresh id for a run that starts over."""
    id_file = run_dir / run_files.TRACKER / RUN_ID_FILE
    if resume and id_file.is_file():
        return id_file.read_text().strip()
    run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    id_file.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(id_file, run_id)
    return run_id


class WandbTracker(Tracker):
    """Weights & Biases tracker; offline by default (files under ``<run dir>/wandb``, upload with ``wandb sync``).

    Runs of one Hydra sweep share a wandb group (the sweep dir name), single runs are grouped by experiment (or
    name); names carry the overrides that vary, tags the chosen options (:func:`run_labels`). ``job_type`` is
    ``train`` or ``eval``; ``resume=True`` continues the wandb run this run dir started (a requeued Slurm job).
    Every wandb call is guarded: on the first failure the tracker logs a warning and switches itself off.
    """

    sync_dir: Path | None = None  # where an offline run's files are (what `wandb sync` uploads)

    def __init__(self, run_dir: str | os.PathLike, name: str, run_config: Mapping[str, Any], project: str = "vpt",
                 entity: str | None = None, group: str | None = None, tags: Sequence[str] = (),
                 mode: str = "offline", job_type: str = "train", resume: bool = False) -> None:
        self.run = None
        try:
            import wandb
            from omegaconf import OmegaConf

            if OmegaConf.is_config(run_config):  # hydra's instantiate hands kwargs over as DictConfig
                run_config = OmegaConf.to_container(run_config, resolve=True)  # wandb would store nested ones as repr
            labels = run_labels(run_dir, name, run_config, group=group, tags=tags)
            run_id = _run_id(Path(run_dir), resume)
            self.run = wandb.init(project=project, entity=entity, group=labels.group, tags=labels.tags,
                                  name=labels.name, job_type=job_type, id=run_id, resume="allow" if resume else None,
                                  mode=mode, dir=str(run_dir), config=dict(run_config), reinit="finish_previous",
                                  settings=wandb.Settings(silent=True, console="off"))
            if getattr(self.run, "offline", False):
                self.sync_dir = Path(self.run.dir).parent.resolve()  # run.dir is the run's files/ folder
                self._say_where("writes")
        except Exception as error:  # wandb raises many kinds (UsageError without a login, network errors, ...)
            self._disable("start", error)

    def _say_where(self, verb: str) -> None:
        log.info("wandb is offline: this run %s its files to %s; upload them with: wandb sync %s",
                 verb, self.sync_dir, shlex.quote(str(self.sync_dir)))

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
            if self.sync_dir is not None:
                self._say_where("wrote")
        except Exception as error:
            self._disable("finish", error)


WandbLogger = WandbTracker  # the earlier name (configs and code that still say vpt.loggers.WandbLogger)
