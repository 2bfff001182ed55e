"""``vpt-eval``: rebuild the model a prompt file describes and evaluate it on a dataset.

The data settings come from the prompt file: training records the ``data`` config (and seed) it was scored on, so
``vpt-eval prompt_file=...`` scores the same splits. ``data=<another dataset>`` replaces them; ``data.KEY=value``
(or ``data=<the same dataset>`` plus keys) changes single settings of the recorded ones. One console line says
which dataset, splits and image counts are scored and where the settings came from.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from .. import run_files
from ..files import atomic_write
from ..loggers import RunFiles, write_json
from ..prompt_file import read_prompt_file
from ..tasks import get_task
from ..tuned import TunedModel
from .build import build_backbone, input_data_config
from .console import format_metrics
from .runtime import autocast_for, configure_cpu, resolve_device, seed_everything, to_plain

log = logging.getLogger(__name__)


def command_line_overrides() -> list[str] | None:
    """The overrides of the running Hydra app (``vpt-eval a=b ...``), or None outside one."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return list(HydraConfig.get().overrides.task)


def _override_key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0].strip()


def recorded_data(manifest: dict[str, Any], prompt_file) -> tuple[dict[str, Any] | None, int | None, str | None, str]:
    """(data config, seed, data group chosen, where from) recorded by the training run: in the prompt file's
    manifest (vpt >= 0.3), else in the run dir's config.yaml (and .hydra/hydra.yaml) next to the prompt file."""
    if isinstance(manifest.get("data"), dict):
        return manifest["data"], manifest.get("data_seed"), manifest.get("data_choice"), "the prompt file"
    run_dir = Path(prompt_file).resolve().parent
    config = run_dir / run_files.CONFIG
    if config.is_file():
        saved = OmegaConf.to_container(OmegaConf.load(config))
        if isinstance(saved, dict) and isinstance(saved.get("data"), dict):
            hydra = run_dir / run_files.HYDRA / "hydra.yaml"
            choice = OmegaConf.select(OmegaConf.load(hydra), "hydra.runtime.choices.data") if hydra.is_file() else None
            return saved["data"], saved.get("seed"), choice, f"the run's {config}"
    return None, None, None, ""


def eval_data_settings(cfg: DictConfig, manifest: dict[str, Any], prompt_file,
                       overrides: Sequence[str] | None) -> tuple[dict[str, Any], int, str]:
    """(data config, data seed, where the settings came from) for evaluating ``prompt_file``.

    ``overrides``: the command line (``None``: not known, e.g. a config composed in Python; ``cfg.data`` is then
    used as given)."""
    given = to_plain(cfg.data)
    if overrides is None:
        return given, int(cfg.seed), "the given config"
    recorded, recorded_seed, recorded_choice, source = recorded_data(manifest, prompt_file)
    keys = [_override_key(o) for o in overrides]
    seed = int(cfg.seed) if "seed" in keys or recorded_seed is None else int(recorded_seed)
    data_keys = [(o, k) for o, k in zip(overrides, keys) if k == "data" or k.startswith("data.")]
    if recorded is None:
        return given, seed, "the command line (the prompt file records no data settings)" if data_keys else \
            "eval.yaml's defaults (the prompt file records no data settings)"
    # data=<group>: the same group training chose (the README's data=shapes for a shapes experiment) keeps the
    # recorded settings (an experiment's sizes, classes); another group is another dataset, scored as configured
    chosen = [o.split("=", 1)[1].strip() for o, k in zip(overrides, keys) if k == "data" and "=" in o]
    if chosen:
        same = chosen[-1] == recorded_choice if recorded_choice else given.get("name") == recorded.get("name")
        if not same:
            trained_on = recorded_choice or recorded.get("name")
            return given, seed, f"data={chosen[-1]} on the command line (trained on {trained_on})"
    merged = OmegaConf.create(recorded)
    changed = []
    for override, key in data_keys:
        if key == "data":
            continue
        path = key[len("data."):]
        if override.startswith("~"):
            parent, _, leaf = path.rpartition(".")
            node = OmegaConf.select(merged, parent) if parent else merged
            if node is not None and leaf in node:
                del node[leaf]
        else:
            OmegaConf.update(merged, path, OmegaConf.select(cfg.data, path), merge=False, force_add=True)
        changed.append(key)
    where = f"{source}" + (f", with {', '.join(changed)} from the command line" if changed else "")
    return OmegaConf.to_container(merged, resolve=True), seed, where


def recorded_target_backbone(manifest: dict[str, Any], prompt_file, task):
    """The backbone of a prompt file made on a ``backbone._target_`` model (e.g. the quickstarts' tiny open_clip
    CLIP), or None for the others. The prompt file records no create arguments for such a model; the run's
    config.yaml next to it holds the config training built it from, rebuilt here with the training seed first
    (random-init weights come out the same; the prompt file's fingerprint check refuses any other weights)."""
    if manifest.get("backbone", {}).get("create_args"):
        return None
    config = Path(prompt_file).resolve().parent / "config.yaml"
    saved = OmegaConf.load(config) if config.is_file() else None
    backbone_cfg = saved.get("backbone") if saved is not None else None
    if backbone_cfg is None or "_target_" not in backbone_cfg:
        return None  # from_prompt_file then says: pass that backbone
    seed = manifest.get("data_seed", saved.get("seed", 0))  # vpt-train seeds once, then builds the backbone
    seed_everything(int(seed))
    log.info("backbone: backbone._target_=%s from %s, built with seed %s", backbone_cfg["_target_"], config, seed)
    return build_backbone(to_plain(backbone_cfg), **task.backbone_options(backbone_cfg))


def evaluate_prompt_file(cfg: DictConfig, output_dir: str | os.PathLike | None = None,
                         overrides: Sequence[str] | None = None) -> dict[str, Any]:
    """Evaluate ``cfg.prompt_file``. ``overrides``: the command line, which decides whether the data settings the
    prompt file records are used (default: the running Hydra app's; none outside one: ``cfg.data`` as given)."""
    files = RunFiles(output_dir or cfg.output_dir)
    manifest, _ = read_prompt_file(cfg.prompt_file)  # the file says which task made it
    if overrides is None:
        overrides = command_line_overrides()
    data_cfg, data_seed, source = eval_data_settings(cfg, manifest, cfg.prompt_file, overrides)
    saved = OmegaConf.to_container(cfg, resolve=True)
    saved.update(data=data_cfg, data_seed=data_seed)
    atomic_write(files.config, OmegaConf.to_yaml(OmegaConf.create(saved)))
    task = get_task(manifest.get("task", "classification"))
    backbone = recorded_target_backbone(manifest, cfg.prompt_file, task)
    seed_everything(int(cfg.seed))
    device = resolve_device(cfg.trainer.device)
    configure_cpu(cfg.trainer, device)
    model: TunedModel = task.load_prompt_file(cfg.prompt_file, pretrained=cfg.get("pretrained") or False,
                                              backbone=backbone)
    data = task.build_data(data_cfg, input_data_config(model.backbone), data_seed)
    model = task.model_for_data(model, data, cfg.prompt_file)
    name = data_cfg.get("name", cfg.data.name)
    task.check_eval_data(model, data, name)
    model.to(device)
    loaders = data.loaders(int(cfg.trainer.eval_batch_size), num_workers=int(cfg.trainer.num_workers), device=device,
                           seed=data_seed)
    scored = [split for split in cfg.splits if split in loaders]
    sizes = ", ".join(f"{split} {len(getattr(data, split))} images" for split in scored)
    log.info("scoring %s: %s; data settings from %s", name, sizes or "no split", source)
    autocast = autocast_for(cfg.trainer.precision, device)
    results: dict[str, Any] = {"prompt_file": str(cfg.prompt_file), "task": task.name,
                               "method": model.prompt_config.method, "backbone": model.backbone.name,
                               "dataset": name, "seed": int(cfg.seed), "data_seed": data_seed,
                               "data_source": source,  # not split_-prefixed keys: those are metrics
                               "images": {split: len(getattr(data, split)) for split in scored}}
    for split in scored:
        metrics = task.evaluate(model, loaders[split], data, autocast, cfg.trainer.limit_eval_batches, split, files.dir)
        results.update({f"{split}_{key}": value for key, value in metrics.items()})
    write_json(files.results, results)
    log.info("results: %s  (%s)", format_metrics(results, task.summary_keys), files.results)
    return results
