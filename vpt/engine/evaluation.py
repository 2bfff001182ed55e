"""``vpt-eval``: rebuild the model a prompt file describes and evaluate it on a dataset."""
from __future__ import annotations

import logging
import os
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..files import atomic_write
from ..loggers import RunFiles, write_json
from ..prompt_file import read_prompt_file
from ..tasks import get_task
from .build import input_data_config
from .console import format_metrics
from .runtime import autocast_for, configure_cpu, resolve_device, seed_everything, to_plain

log = logging.getLogger(__name__)


def evaluate_prompt_file(cfg: DictConfig, output_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    files = RunFiles(output_dir or cfg.output_dir)
    atomic_write(files.config, OmegaConf.to_yaml(cfg, resolve=True))
    manifest, _ = read_prompt_file(cfg.prompt_file)  # the file says which task made it
    task = get_task(manifest.get("task", "classification"))
    seed_everything(int(cfg.seed))
    device = resolve_device(cfg.trainer.device)
    configure_cpu(cfg.trainer, device)
    model = task.load_prompt_file(cfg.prompt_file, pretrained=cfg.get("pretrained") or False)
    data = task.build_data(to_plain(cfg.data), input_data_config(model.backbone), int(cfg.seed))
    model = task.model_for_data(model, data, cfg.prompt_file)
    task.check_eval_data(model, data, cfg.data.name)
    model.to(device)
    loaders = data.loaders(int(cfg.trainer.eval_batch_size), num_workers=int(cfg.trainer.num_workers), device=device,
                           seed=int(cfg.seed))
    autocast = autocast_for(cfg.trainer.precision, device)
    results: dict[str, Any] = {"prompt_file": str(cfg.prompt_file), "task": task.name,
                               "method": model.prompt_config.method, "backbone": model.backbone.name,
                               "dataset": cfg.data.name, "seed": int(cfg.seed)}
    for split in cfg.splits:
        if split in loaders:
            metrics = task.evaluate(model, loaders[split], data, autocast, cfg.trainer.limit_eval_batches, split, files.dir)
            results.update({f"{split}_{key}": value for key, value in metrics.items()})
    write_json(files.results, results)
    log.info("results: %s  (%s)", format_metrics(results, task.summary_keys), files.results)
    return results
