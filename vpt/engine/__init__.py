"""Config-driven training and evaluation (plain PyTorch), one responsibility per module:

- :mod:`.runtime`: device, CPU threads, precision, seeds;
- :mod:`.build`: backbone, input size, optimiser, lr schedule;
- :mod:`.loop`: the epoch loop (:class:`Trainer`, :func:`train`), for any task of :mod:`vpt.tasks`;
- :mod:`.checkpoints`: resume state, exported backbone weights;
- :mod:`.evaluation`: ``vpt-eval`` on a prompt file;
- :mod:`.console`: progress bars and one-line summaries.
"""
from ..tasks.classification import evaluate
from .build import build_backbone, build_optimizer, build_scheduler, input_data_config
from .checkpoints import TrainState, export_backbone
from .evaluation import evaluate_prompt_file
from .loop import NonFiniteLossError, Trainer, build_tracker, train
from .runtime import autocast_for, configure_cpu, derive_seed, resolve_device, seed_everything, to_plain

__all__ = [
    "NonFiniteLossError", "TrainState", "Trainer", "autocast_for", "build_backbone", "build_optimizer",
    "build_scheduler", "build_tracker", "configure_cpu", "derive_seed", "evaluate", "evaluate_prompt_file", "export_backbone",
    "input_data_config", "resolve_device", "seed_everything", "to_plain", "train",
]
