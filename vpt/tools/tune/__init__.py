"""The research loop as one command: ``vpt-tune`` runs the VPT tuning protocol for any experiment.

    from vpt.tools.tune import tune
    result = tune(["experiment=vtab/cifar100", "prompt=deep"], grid="vpt", seeds=5, jobs=2)
    result.pick_settings, result.scores, result.final_results, result.rows   # rows: vpt.tools.report's table

See :mod:`vpt.tools.tune.protocol` for the stages and the files written, :mod:`vpt.tools.tune.grid` for grid files.
"""
from .cli import main
from .grid import Grid, at_edge, best_point, grid_names, load_grid, next_points, search
from .launch import HydraLauncherRunner, SubprocessRunner, TrainRun, TuneRunError
from .protocol import Protocol, TuneSettings, train_once, tune
from .result import TuneResult
from .records import prepare_run_dir, run_record

__all__ = [
    "Grid", "HydraLauncherRunner", "Protocol", "SubprocessRunner", "TrainRun", "TuneResult", "TuneRunError",
    "TuneSettings", "at_edge", "best_point", "grid_names", "load_grid", "main", "next_points", "prepare_run_dir",
    "run_record", "search", "train_once", "tune",
]
