"""Which run of how many a Hydra multirun is on, for the console: ``run 3/12`` in each run's progress bar and
epoch lines.

Hydra gives a job its number (``hydra.job.num``) but not the size of its sweep. :class:`SweepSize`, a Hydra
callback (``hydra.callbacks.sweep_size`` in ``configs/train.yaml``), counts the jobs when the multirun starts and
hands the count to them through the environment, which in-process jobs, launcher workers and Slurm jobs share.
"""
from __future__ import annotations

import logging
import os
from typing import Any

from hydra.experimental.callback import Callback  # its hooks do nothing unless overridden
from omegaconf import DictConfig

log = logging.getLogger(__name__)

SWEEP_SIZE_ENV = "VPT_SWEEP_SIZE"


def sweep_size(config: DictConfig) -> int | None:
    """Jobs in the multirun ``config`` starts: the grid's size (basic sweeper) or ``n_trials`` (Optuna); None
    for a sweeper whose size is not known up front."""
    sweeper = config.hydra.sweeper
    target = str(sweeper.get("_target_", ""))
    if "optuna" in target.lower():
        trials = sweeper.get("n_trials")
        return int(trials) if trials else None
    if not target.endswith("BasicSweeper"):
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    # as BasicSweeper.sweep does: hydra.sweeper.params first, then the command line's overrides
    params = [f"{key}={value}" for key, value in (sweeper.get("params") or {}).items()]
    try:
        overrides = OverridesParser.create().parse_overrides([*params, *config.hydra.overrides.task])
        return sum(len(batch) for batch in BasicSweeper.split_arguments(overrides, None))
    except Exception as error:  # noqa: BLE001 - e.g. a glob() sweep, which needs the config loader: no count
        log.debug("sweep size unknown: %s", error)
        return None


class SweepSize(Callback):
    """Hydra callback: puts the multirun's job count in ``$VPT_SWEEP_SIZE`` for :func:`run_position`."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        size = sweep_size(config)
        if size:
            os.environ[SWEEP_SIZE_ENV] = str(size)
        else:
            os.environ.pop(SWEEP_SIZE_ENV, None)


def in_multirun() -> bool:
    """Whether this process runs a job of a Hydra multirun (``-m``, a sweeper, vpt-tune's launcher)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_position() -> str:
    """``run 3/12`` in the third job of a 12-job multirun (``run 3`` when the size is unknown); "" outside one."""
    from hydra.core.hydra_config import HydraConfig

    if not in_multirun():
        return ""
    number = int(HydraConfig.get().job.num) + 1
    size = os.environ.get(SWEEP_SIZE_ENV)
    return f"run {number}/{size}" if size else f"run {number}"
