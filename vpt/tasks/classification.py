"""Image classification: a linear, CLIP zero-shot or label-mapped pretrained head on the pooled feature; top-1/top-5/per-class accuracy."""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from ..config import PromptConfig
from ..errors import ConfigError
from ..heads import label_map_head, zero_shot_head_for
from ..model import PromptedModel
from .base import Task, limited, register_task

HEAD_KINDS = ("linear", "zero_shot", "label_map")


class ClassificationTask(Task):
    name = "classification"
    primary_metric = "top1"
    summary_keys = ("train_loss", "train_top1", "val_top1", "test_top1", "test_top5", "train_images_per_s")

    def build_data(self, data_cfg, data_config, seed):
        from ..data import build_data

        return build_data(dict(data_cfg), data_config, seed=seed)

    def build_model(self, cfg, backbone, data) -> PromptedModel:
        task = OmegaConf.to_container(cfg.task, resolve=True)
        prompt = PromptConfig.from_dict(OmegaConf.to_container(cfg.prompt, resolve=True))
        kind = task.get("head", "linear")
        if kind not in HEAD_KINDS:
            raise ConfigError(f"task.head={kind!r}; valid: {', '.join(HEAD_KINDS)}")
        head = None  # PromptedModel builds a LinearHead from num_classes
        if kind == "zero_shot":
            head = zero_shot_head_for(backbone, data.class_names, task.get("templates"), trainable=prompt.train_head)
        elif kind == "label_map":
            head = label_map_head(backbone, len(data.class_names), task.get("label_map"))
        torch.manual_seed(int(cfg.seed))  # head and prompt init do not depend on what building the data consumed
        return PromptedModel(backbone, prompt, num_classes=len(data.class_names), head=head, class_names=data.class_names)

    def load_prompt_file(self, path, pretrained: Any = False, backbone=None) -> PromptedModel:
        return PromptedModel.from_prompt_file(path, backbone=backbone, pretrained=pretrained)

    def model_for_data(self, model, data, path):
        """A CLIP prompt file (coop, cocoop, maple, ivlp) evaluated on other classes than it was trained on (e.g.
        ``data.subsample_classes=new``): the learned context applied to the evaluated class names."""
        if getattr(model.head, "kind", None) != "clip_prompt" or list(data.class_names) == list(model.class_names):
            return model
        import logging

        logging.getLogger(__name__).info("prompt file %s: its context applied to the %d evaluated classes %s", path,
                                         len(data.class_names), list(data.class_names)[:5])
        return PromptedModel.from_prompt_file(path, backbone=model.backbone, class_names=data.class_names)

    def init_prompts(self, model, train_loader, seed: int) -> None:
        if getattr(model.prompt_config, "init", None) != "patch":
            return
        images, _ = next(iter(train_loader))
        model.init_prompts_from_patches(images, generator=torch.Generator().manual_seed(seed))

    def training_loss(self, model, batch, trainer_cfg):
        """Cross-entropy; with ``trainer.mixup`` (timm Mixup/CutMix) soft-target cross-entropy on mixed images.
        Train accuracy is against the unmixed labels."""
        images, labels = batch
        smoothing = float(trainer_cfg.label_smoothing)
        mixup_options = trainer_cfg.get("mixup")
        if not mixup_options:
            logits = model(images).float()
            loss = F.cross_entropy(logits, labels, label_smoothing=smoothing)
        else:
            from timm.loss import SoftTargetCrossEntropy

            from ..data.recipes import build_mixup, mix_batch

            options = OmegaConf.to_container(mixup_options, resolve=True) if OmegaConf.is_config(mixup_options) \
                else dict(mixup_options)
            mixup = build_mixup(options, num_classes=_num_classes(model), label_smoothing=smoothing)
            images, targets = mix_batch(mixup, images, labels)
            logits = model(images).float()
            loss = SoftTargetCrossEntropy()(logits, targets)
        return loss, len(labels), {"correct": (logits.detach().argmax(dim=1) == labels).sum()}

    def epoch_summary(self, sums, seen):
        return {"train_loss": sums["loss"] / seen, "train_top1": 100.0 * sums["correct"] / seen}

    def evaluate(self, model, loader, data, autocast, limit, split, run_dir):
        return evaluate(model, loader, data.num_classes, autocast, limit)

    def check_eval_data(self, model, data, dataset_name: str) -> None:
        num_outputs = getattr(model.head, "out_features", None)
        if num_outputs is not None and num_outputs != data.num_classes:
            raise ConfigError(f"the prompt file's head has {num_outputs} classes but data={dataset_name} has "
                              f"{data.num_classes}; evaluate on the dataset (and data.classes) it was trained for")


def _num_classes(model) -> int:
    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper
    if not getattr(model, "class_names", None):
        raise ConfigError("trainer.mixup needs the model's class names to build soft targets")
    return len(model.class_names)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, num_classes: int, autocast=None, limit: int | None = None) -> dict[str, Any]:
    """top-1 / top-5 / mean per-class accuracy (percent), per-class accuracy and mean loss."""
    import contextlib

    autocast = autocast or contextlib.nullcontext
    was_training = model.training
    model.eval()
    k = min(5, num_classes)
    correct_per_class = torch.zeros(num_classes, dtype=torch.long)
    total_per_class = torch.zeros(num_classes, dtype=torch.long)
    top_k_hits, loss_sum = 0, 0.0
    for images, labels in limited(loader, limit):
        with autocast():
            logits = model(images)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        predicted = logits.topk(k, dim=1).indices
        top1 = (predicted[:, 0] == labels).cpu()
        top_k_hits += int((predicted == labels[:, None]).any(dim=1).sum())
        labels = labels.cpu()
        total_per_class += torch.bincount(labels, minlength=num_classes)
        correct_per_class += torch.bincount(labels[top1], minlength=num_classes)
    model.train(was_training)
    return _accuracy_metrics(correct_per_class, total_per_class, top_k_hits, loss_sum)


def _accuracy_metrics(correct_per_class: torch.Tensor, total_per_class: torch.Tensor, top_k_hits: int,
                      loss_sum: float) -> Mapping[str, Any]:
    count = int(total_per_class.sum())
    if count == 0:
        return {}
    present = total_per_class > 0
    per_class = (100.0 * correct_per_class / total_per_class.clamp(min=1)).tolist()
    return {
        "top1": 100.0 * int(correct_per_class.sum()) / count,
        "top5": 100.0 * top_k_hits / count,
        "mean_class_top1": float(torch.tensor(per_class)[present].mean()),
        "loss": loss_sum / count,
        "per_class_top1": [round(v, 4) for v in per_class],
        "count": count,
    }


register_task(ClassificationTask())
