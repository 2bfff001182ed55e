"""Running a batch of ``vpt-train`` runs: as N local subprocesses, or through the Hydra launcher in use.

* :class:`SubprocessRunner` (``tune.jobs=N``): each run is ``vpt-train <args> hydra.run.dir=<run dir>
  trainer.resume=true``; at most N at a time, also across batches submitted from several threads.
* :class:`HydraLauncherRunner` (any ``hydra/launcher=...`` among the overrides, e.g. ``joblib`` or ``slurm``): the
  batch goes to that launcher in one ``launch`` call, as ``vpt-train -m`` would send a sweep, each job writing
  to ``<tune dir>/<run path>`` (``hydra.sweep.subdir``).

Either way a run that ends without ``results.json`` raises :class:`TuneRunError`; one that wrote results with
status ``failed`` (a diverged learning rate) is left to the caller to score.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ...errors import ConfigError, VptError
from ...files import atomic_write_json
from ...run_files import BEST, EVAL_ARGS, NEW_CLASSES, TRANSFER
from .records import RESULTS_FILE, move_aside

CONFIG_MODULE = "vpt.configs"
RUN_SETTINGS = ("trainer.resume=true", "trainer.progress_bar=false")  # resume: from the resume state when present
LOG_FILE = "vpt-train.log"  # a subprocess run's stdout and stderr, appended across resumes
LOG_TAIL_LINES = 15
HYDRA_LOCK = threading.RLock()  # Hydra's global state (GlobalHydra, HydraConfig) allows one compose at a time


class TuneRunError(VptError, RuntimeError):
    """A run that stopped without writing results.json (a crash, a bad override, a killed job)."""


@dataclass
class TrainRun:
    """One ``vpt-train`` run of a tuning stage."""

    label: str  # e.g. search/lr0.5_wd0.0001, also its path below the tune dir
    dir: Path
    args: list[str]  # vpt-train overrides, without the run dir and resume settings
    point: tuple | None = None  # the grid point it trains
    seed: int | None = None
    results: dict[str, Any] | None = field(default=None, repr=False)


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def vpt_executable(name: str) -> str:
    """The vpt command ``name`` (vpt-train, vpt-eval) beside this Python (a venv's bin/), else the one on PATH."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else name


class SubprocessRunner:
    """At most ``jobs`` vpt-train processes at a time (each CPU run should then use ``trainer.cpu_threads=1``)."""

    def __init__(self, jobs: int = 1, executable: str | None = None, cwd: str | os.PathLike | None = None,
                 extra_args: Sequence[str] = ()) -> None:
        if int(jobs) < 1:
            raise ConfigError(f"tune.jobs must be at least 1, got {jobs!r}")
        self.jobs = int(jobs)
        self.executable = executable or vpt_executable("vpt-train")
        self.cwd = cwd
        self.extra_args = list(extra_args)  # Hydra settings for every run, e.g. hydra.verbose=true
        self._slots = threading.Semaphore(self.jobs)  # shared by every batch, whichever thread submits it

    def command(self, run: TrainRun) -> list[str]:
        return [self.executable, *run.args, *self.extra_args, f"hydra.run.dir={run.dir}", *RUN_SETTINGS]

    def run(self, runs: Sequence[TrainRun]) -> None:
        if not runs:
            return
        with ThreadPoolExecutor(max_workers=len(runs)) as pool:
            list(pool.map(self._run_one, runs))  # re-raises the first failure, after every run has ended

    def _run_one(self, run: TrainRun) -> None:
        with self._slots:
            print(f"  training {run.label}  (log: {run.dir / LOG_FILE})", flush=True)
            with open(run.dir / LOG_FILE, "ab") as log:
                log.write(("$ " + " ".join(self.command(run)) + "\n").encode())
                log.flush()
                code = subprocess.run(self.command(run), stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd).returncode
        if not (run.dir / RESULTS_FILE).is_file():
            raise TuneRunError(f"vpt-train stopped (exit status {code}) without results in {run.dir}; the end of "
                               f"{run.dir / LOG_FILE}:\n{_tail(run.dir / LOG_FILE)}\nFix the cause and run the same "
                               "command again: finished runs are reused, this one resumes.")


def train_job(cfg) -> dict[str, Any]:
    """The task function the Hydra launcher runs for each job (in this process, a worker or a Slurm node)."""
    from ..cli import register_resolvers
    from ...engine import train

    register_resolvers()  # a fresh worker process has none
    return train(cfg)


class HydraLauncherRunner:
    """Runs a batch through the launcher that ``launch_overrides`` (``hydra/launcher=...``, ``hydra.launcher.*``)
    select; job dirs are ``<sweep_dir>/<run label>``."""

    def __init__(self, launch_overrides: Sequence[str], sweep_dir: str | os.PathLike) -> None:
        self.launch_overrides = list(launch_overrides)
        self.sweep_dir = Path(sweep_dir)
        self._launched = 0  # job numbers keep counting across batches, as in one long sweep

    def run(self, runs: Sequence[TrainRun]) -> None:
        if not runs:
            return
        with HYDRA_LOCK:
            returns = self._launch([[*run.args, f"hydra.sweep.subdir={run.label}", *RUN_SETTINGS] for run in runs])
        jobs = list(returns) + [None] * (len(runs) - len(returns))  # a launcher that returned early: no job
        for run, job in zip(runs, jobs):
            if not (run.dir / RESULTS_FILE).is_file():
                error = _job_error(job) if job is not None else "not run"
                raise TuneRunError(f"the {run.label} job stopped without results in {run.dir} ({error!r}); see "
                                   f"{run.dir / 'train.log'}. Fix the cause and run the same command again: finished "
                                   "runs are reused, this one resumes.")

    def _launch(self, job_overrides: list[list[str]]) -> Sequence[Any]:
        from hydra import compose, initialize_config_module
        from hydra._internal.callbacks import Callbacks  # what `vpt-train -m` passes its launcher
        from hydra.core.global_hydra import GlobalHydra
        from hydra.core.plugins import Plugins
        from hydra.types import HydraContext

        from ..cli import register_resolvers

        register_resolvers()
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            master = compose("train", overrides=[*self.launch_overrides, f"hydra.sweep.dir={self.sweep_dir}"],
                             return_hydra_config=True)
            context = HydraContext(config_loader=GlobalHydra.instance().config_loader(), callbacks=Callbacks(master))
            launcher = Plugins.instance().instantiate_launcher(config=master, hydra_context=context,
                                                               task_function=train_job)
            returns = launcher.launch(job_overrides, initial_job_idx=self._launched)
        self._launched += len(job_overrides)
        return returns


def _job_error(job: Any) -> BaseException | None:
    """The exception a failed job raised (Hydra's JobReturn re-raises it on access), or None."""
    try:
        job.return_value
    except Exception as error:  # noqa: BLE001 - whatever the job raised is reported, not handled
        return error
    return None


NEW_CLASSES_FOLDER = NEW_CLASSES  # vpt.tools.report reads <run dir>/new/results.json as the run's new_top1
NEW_CLASSES_OVERRIDES = ("data.subsample_classes=new",)
TRANSFER_FOLDER = TRANSFER  # <run dir>/transfer/<name>/results.json: transfer_<name>_top1 (vpt.tools.report)


def evaluate_run(run: TrainRun, folder: str, overrides: Sequence[str]) -> None:
    """``vpt-eval`` of the run's ``best`` prompt file with ``overrides`` (the data settings it was trained with,
    changed by them: base-to-novel's new classes, or another dataset) into ``<run dir>/<folder>``; kept when that
    finished before with the same overrides, moved aside when made with others."""
    out = run.dir / folder
    record = out / EVAL_ARGS
    if (out / RESULTS_FILE).is_file():
        if not record.is_file() or json.loads(record.read_text()) == list(overrides):
            return
        move_aside(out)  # made with other overrides: kept, beside
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(record, list(overrides))
    command = [vpt_executable("vpt-eval"), f"prompt_file={run.dir / BEST}", *overrides, "splits=[test]",
               f"hydra.run.dir={out}", "trainer.progress_bar=false"]
    print(f"  evaluating {run.label} into {folder}  (log: {out / 'vpt-eval.log'})", flush=True)
    with open(out / "vpt-eval.log", "ab") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
    if code != 0 or not (out / RESULTS_FILE).is_file():
        raise TuneRunError(f"vpt-eval of {run.label} into {folder} stopped (exit {code}) without results; "
                           f"its log {out / 'vpt-eval.log'}:\n{_tail(out / 'vpt-eval.log')}")
