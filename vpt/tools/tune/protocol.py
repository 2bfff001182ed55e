"""The VPT tuning protocol for any experiment (Jia et al., ECCV 2022; their tune_vtab.py, as one function).

Stage 1 trains every grid point (e.g. base lr x weight decay) with ``data.train_on_trainval=false`` (VTAB-1k:
train800, scored on val200) and picks the best val score, ties to the smaller value of the first grid key, then
the next. While the pick sits at an edge of an extendable key's range, the range grows one step past it (at most
``max_extend`` rounds). Stage 2 trains the pick with each seed on train+val (train800val200) and tests.
Both stages go through a runner (local subprocesses or the Hydra launcher in use); finished runs are reused.

Output (``tune.out``, default ``<paths.log_dir>/tune/<name>``)::

    search/<point>/            stage-1 run dirs; search/table.md and plots (vpt-report)
    final/<point>_seed<s>/     stage-2 run dirs
    table.md/.csv/.json        test mean ± std of the pick over seeds (vpt-report), paper numbers beside
    tune.json                  every score, the pick, every final result
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ...errors import ConfigError
from . import grid as grids
from .grid import Grid, Point
from .launch import (HYDRA_LOCK, NEW_CLASSES_FOLDER, NEW_CLASSES_OVERRIDES, TRANSFER_FOLDER, HydraLauncherRunner,
                     SubprocessRunner, TrainRun, evaluate_run)
from ...files import file_sha256
from .records import (REUSE, is_launch_setting, override_key, prepare_run_dir, read_results,
                      run_record, weights_file)
from .result import TuneResult
from .summary import write_reports

STAGE_DATA_KEY = "data.train_on_trainval"
DEFAULTS: dict[str, Any] = {"grid": "vpt", "seeds": 5, "max_extend": 2, "jobs": 1, "out": None, "metric": None,
                            "search_seed": None, "final_on_trainval": True, "search": True, "eval_new": False,
                            "eval_on": None, "search_test": True}


@dataclass
class TuneSettings:
    """How to tune. ``seeds``: a count (0..N-1) or a list. ``metric``/``search_seed`` default to the config's
    ``optimized_metric`` / ``seed``. ``final_on_trainval=false`` keeps val out of stage 2 (VPT's FGVC protocol).
    ``search=false`` skips stage 1 and trains every grid point with every seed: the grid's single point, or a sweep
    such as CoOp's shots (configs/tune/coop_fewshot.yaml), one table row per point."""

    grid: Grid
    seeds: list[int]
    out: Path
    metric: str
    search_seed: int
    max_extend: int = 2
    jobs: int = 1
    final_on_trainval: bool = True
    search: bool = True
    eval_new: bool = False  # base-to-novel: each final run's prompt file also scored on the new classes
    # cross-dataset / domain generalisation: each final run's prompt file also scored on these datasets, name ->
    # the vpt-eval overrides that select it (configs/experiment/coop/cross_dataset.yaml)
    eval_on: dict[str, list[str]] = field(default_factory=dict)
    # false: stage-1 runs skip the test split (only their val score is read; saves a test pass per grid point)
    search_test: bool = True

    def evaluations(self) -> list[tuple[str, list[str]]]:
        """(folder under the run dir, vpt-eval overrides) of each evaluation after training."""
        new = [(NEW_CLASSES_FOLDER, list(NEW_CLASSES_OVERRIDES))] if self.eval_new else []
        return new + [(f"{TRANSFER_FOLDER}/{name}", args) for name, args in self.eval_on.items()]

    @classmethod
    def resolve(cls, options: Mapping[str, Any], train: "TrainInfo") -> "TuneSettings":
        """Defaults, then the experiment's ``tune:`` block, then ``options`` (the command line's ``tune.*``)."""
        merged = {**DEFAULTS, **train.tune_block, **{k: v for k, v in options.items() if v is not None}}
        unknown = sorted(set(merged) - set(DEFAULTS))
        if unknown:
            raise ConfigError(f"unknown tune option(s) {', '.join(unknown)}; valid: {', '.join(DEFAULTS)}")
        seeds = merged["seeds"]
        seeds = list(range(int(seeds))) if isinstance(seeds, int) and not isinstance(seeds, bool) else seeds
        if not isinstance(seeds, (list, tuple)) or not seeds or not all(isinstance(s, int) for s in seeds):
            raise ConfigError(f"tune.seeds must be a count or a list of integer seeds, got {merged['seeds']!r}")
        if int(merged["max_extend"]) < 0:
            raise ConfigError(f"tune.max_extend must be 0 or more, got {merged['max_extend']!r}")
        grid = merged["grid"] if isinstance(merged["grid"], Grid) else grids.load_grid(merged["grid"])
        out = Path(merged["out"]) if merged["out"] else Path(train.log_dir) / "tune" / train.name
        search_seed = train.seed if merged["search_seed"] is None else int(merged["search_seed"])
        return cls(grid=grid, seeds=[int(s) for s in seeds], out=out.resolve(), metric=merged["metric"] or train.metric,
                   search_seed=search_seed, max_extend=int(merged["max_extend"]), jobs=int(merged["jobs"]),
                   final_on_trainval=_flag(merged["final_on_trainval"]), search=_flag(merged["search"]),
                   eval_new=_flag(merged["eval_new"]), eval_on=_eval_targets(merged["eval_on"]),
                   search_test=_flag(merged["search_test"]))


def _eval_targets(value: Any) -> dict[str, list[str]]:
    """tune.eval_on: {name: [vpt-eval override, ...]} (a name is a folder: letters, digits, _ . -)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"tune.eval_on must map a name to a list of vpt-eval overrides, e.g. {{dtd: [data=zhou_split, "
                          f"data.root=/data/dtd]}}, got {value!r}")
    targets = {}
    for name, args in value.items():
        if not isinstance(name, str) or not name or not all(c.isalnum() or c in "_.-" for c in name) or \
                name[0] == "." or name == "mean":  # transfer_mean_top1 is the mean over the targets
            raise ConfigError(f"tune.eval_on name {name!r}: use letters, digits, '_', '.' or '-' (it names a folder; "
                              "not 'mean')")
        if isinstance(args, str) or not isinstance(args, (list, tuple)) or not all(isinstance(a, str) for a in args):
            raise ConfigError(f"tune.eval_on.{name} must be a list of vpt-eval overrides (strings), got {args!r}")
        targets[name] = list(args)
    return targets


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        if value.lower() not in ("true", "false"):
            raise ConfigError(f"expected true or false, got {value!r}")
        return value.lower() == "true"
    return bool(value)


@dataclass
class TrainInfo:
    """What vpt-tune reads from the composed vpt-train config."""

    name: str
    log_dir: str
    seed: int
    metric: str
    weights: Path | None
    tune_block: dict[str, Any] = field(default_factory=dict)


def read_train_config(task_args: Sequence[str]) -> TrainInfo:
    """Compose the vpt-train config once: a bad override fails here, before any run starts."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from ..cli import optimized_metric, register_resolvers

    register_resolvers()
    with HYDRA_LOCK, initialize_config_module("vpt.configs", version_base="1.3"):
        try:
            cfg = compose("train", overrides=list(task_args))
        except Exception as error:  # hydra's override and composition errors
            raise ConfigError(f"the vpt-train overrides do not compose: {error}") from error
    block = cfg.get("tune")
    return TrainInfo(name=str(cfg.name), log_dir=str(cfg.paths.log_dir), seed=int(cfg.seed),
                     metric=optimized_metric(cfg),
                     weights=weights_file(cfg.backbone.get("pretrained")),
                     tune_block=OmegaConf.to_container(block, resolve=True) if block is not None else {})


def task_overrides(args: Sequence[str], grid: Grid) -> list[str]:
    """The vpt-train overrides every run shares: no Hydra launch settings, no seed (the protocol sets it per run;
    a given seed is the search seed). Keys the protocol sets per run are refused."""
    owned = {STAGE_DATA_KEY, "hydra.run.dir", *grid.keys}
    clashes = [arg for arg in args if override_key(arg) in owned]
    if clashes:
        raise ConfigError(f"vpt-tune sets {', '.join(sorted({override_key(a) for a in clashes}))} itself (grid "
                          f"{grid.name!r}: {', '.join(grid.keys)}; the data split per stage; the run dirs under "
                          "tune.out): drop them from the overrides, or change the grid (tune.grid=...)")
    return [arg for arg in args if not is_launch_setting(arg) and override_key(arg) != "seed"]


def make_runner(launch_args: Sequence[str], settings: TuneSettings):
    if any(arg.lstrip("+").startswith("hydra/launcher=") for arg in launch_args):
        return HydraLauncherRunner(launch_args, settings.out)
    return SubprocessRunner(settings.jobs, extra_args=launch_args)


class Protocol:
    """One tuning: the two stages over ``task_args`` with ``settings``, runs through ``runner``."""

    def __init__(self, task_args: Sequence[str], settings: TuneSettings, runner, weights_sha256: str | None,
                 evaluate=evaluate_run) -> None:
        self.task_args, self.settings, self.runner = list(task_args), settings, runner
        self.weights_sha256 = weights_sha256
        self.evaluate = evaluate  # (run, folder, vpt-eval overrides) -> <run dir>/<folder>/results.json

    def stage_run(self, stage: str, point: Point, seed: int, on_trainval: bool) -> TrainRun:
        grid = self.settings.grid
        label = f"{stage}/{grid.folder(point)}" + (f"_seed{seed}" if stage == "final" else "")
        # ++: the key may be missing from a data config that has no val split of its own (digits)
        split = f"++{STAGE_DATA_KEY}={str(on_trainval).lower()}"
        args = [*self.task_args, *grid.overrides(point), f"seed={seed}", split]
        if stage == "search" and not self.settings.search_test:
            args.append("++trainer.test=false")
        return TrainRun(label, self.settings.out / label, args, point=point, seed=seed)

    def execute(self, runs: list[TrainRun], stage: str) -> None:
        """Reuse what is finished, resume what was interrupted, run the rest as one batch."""
        pending = []
        for index, run in enumerate(runs, start=1):
            state = prepare_run_dir(run.dir, run_record(run.args, self.weights_sha256))
            print(f"[{stage} {index}/{len(runs)}] {run.label}: {state}", flush=True)
            if state != REUSE:
                pending.append(run)
        self.runner.run(pending)
        for run in runs:
            run.results = read_results(run.dir)

    def score(self, run: TrainRun) -> float | None:
        results = run.results or {}
        if results.get("status", "completed") != "completed":
            return None  # e.g. a diverged lr: never the pick
        value = results.get(self.settings.metric)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"{run.dir / 'results.json'} has no {self.settings.metric}: stage 1 needs a val split "
                              "held out from training (VTAB-1k: val200.txt; otherwise data.val_fraction=0.2 or "
                              "data.val_size=N), or set tune.metric to a key results.json has")
        return float(value)

    def search(self) -> tuple[dict[Point, float | None], list[TrainRun]]:
        settings, done = self.settings, []

        def evaluate(points: Sequence[Point]) -> dict[Point, float | None]:
            runs = [self.stage_run("search", point, settings.search_seed, False) for point in points]
            self.execute(runs, "search")
            done.extend(runs)
            return {point: self.score(run) for point, run in zip(points, runs)}

        return grids.search(settings.grid, evaluate, settings.max_extend), done

    def run(self) -> TuneResult:
        settings = self.settings
        if settings.search:
            scores, search_runs = self.search()
            pick = grids.best_point(settings.grid, scores)
            for key in grids.at_edge(settings.grid, scores):
                print(f"warning: the pick's {key} is still at the edge of the searched range; raise "
                      "tune.max_extend to look further", flush=True)
        else:  # no stage 1: every grid point with every seed (one point: that setting; several: a sweep, e.g. shots)
            points = settings.grid.points()
            scores, search_runs, pick = {}, [], points[0] if len(points) == 1 else None
        trained = [pick] if pick is not None else settings.grid.points()
        final_runs = [self.stage_run("final", point, seed, settings.final_on_trainval)
                      for point in trained for seed in settings.seeds]
        self.execute(final_runs, "final")
        for folder, overrides in settings.evaluations():  # base-to-novel's new classes, other datasets
            for run in final_runs:
                if (run.results or {}).get("status", "completed") == "completed":
                    self.evaluate(run, folder, overrides)
        result = TuneResult(settings.out, settings.grid, settings.metric, scores, pick, search_runs, final_runs)
        write_reports(result)
        return result


def tune(train_args: Sequence[str], runner=None, **options: Any) -> TuneResult:
    """Run the protocol for ``vpt-train <train_args>``; ``options`` are the ``tune.*`` settings (grid, seeds,
    max_extend, jobs, out, metric, search_seed, final_on_trainval, search). Returns every score and result."""
    launch_args = [arg for arg in train_args if is_launch_setting(arg)]
    info = read_train_config([arg for arg in train_args if not is_launch_setting(arg)])
    settings = TuneSettings.resolve(options, info)
    task_args = task_overrides(train_args, settings.grid)
    digest = file_sha256(info.weights) if info.weights is not None else None
    protocol = Protocol(task_args, settings, runner or make_runner(launch_args, settings), digest)
    first = settings.grid.points()[0]
    read_train_config(protocol.stage_run("search", first, settings.search_seed, False).args)  # the grid keys exist
    return protocol.run()


def train_once(train_args: Sequence[str], run_dir: str | Path, runner=None) -> dict[str, Any]:
    """One ``vpt-train <train_args>`` run in ``run_dir`` with the protocol's reuse rules (reused when finished with
    the same arguments and weights, resumed when interrupted, moved aside when made otherwise); its results."""
    run_dir = Path(run_dir).resolve()
    launch_args = [arg for arg in train_args if is_launch_setting(arg)]
    task_args = [arg for arg in train_args if not is_launch_setting(arg)]
    info = read_train_config(task_args)
    digest = file_sha256(info.weights) if info.weights is not None else None
    run = TrainRun(run_dir.name, run_dir, task_args)
    state = prepare_run_dir(run_dir, run_record(task_args, digest))
    print(f"[run] {run_dir}: {state}", flush=True)
    if state != REUSE:
        (runner or SubprocessRunner(extra_args=launch_args)).run([run])
    return read_results(run_dir) or {}
