"""Object detection: a frozen prompted ViT -> ViTDet pyramid -> torchvision detector; COCO box metrics.

Data configs (``configs/data/shapes.yaml``, ``coco.yaml``, ``pennfudan.yaml``, ``voc.yaml``) name a ``format``;
the task config (``configs/task/detection.yaml``) names the detector and its sizes. Each evaluation writes the
predictions in COCO results format (``predictions_<split>.json``, the annotation's image and category ids)
and a few images with predicted and true boxes (``predictions_<split>/*.png``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch.utils.data import Dataset

from ..config import PromptConfig
from ..data.loaders import DeviceDataLoader
from ..errors import ConfigError
from ..model import PromptedModel
from ..run_files import predictions_file, predictions_folder
from ..tasks.base import Task, limited, register_task
from .transforms import collate_detection, move_detection_batch

DRAWN_IMAGES = 4  # images drawn per evaluated split


@dataclass
class DetectionData:
    train: Dataset
    val: Dataset | None
    test: Dataset | None
    class_names: list[str]
    val_in_train: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def loaders(self, batch_size: int, num_workers: int = 0, device: str | torch.device = "cpu", seed: int = 0,
                eval_batch_size: int | None = None) -> dict[str, DeviceDataLoader]:
        """Lists of images and target dicts on ``device``; ``sharded(rank, world_size)`` for torchrun."""
        loaders = {}
        for split in ("train", "val", "test"):
            dataset = getattr(self, split)
            if dataset is not None:
                size = batch_size if split == "train" else (eval_batch_size or batch_size)
                loaders[split] = DeviceDataLoader(dataset, size, split == "train", num_workers, device, seed,
                                                  collate_fn=collate_detection, move=move_detection_batch)
        return loaders


def _datasets(data_cfg: dict[str, Any], size: int, seed: int) -> dict[str, Dataset | None]:
    from .. import detection as det

    fmt = data_cfg.get("format")
    train_tf = det.train_transforms(size, data_cfg.get("scale_range", (0.75, 1.25)),
                                    0.5 if data_cfg.get("flip", True) else 0.0)
    # evaluation images keep their size: the detector resizes them itself and maps its boxes back to the image's
    # own pixels, where the annotations (and the COCO results file) are
    eval_tf = det.eval_transforms(None)
    if fmt == "shapes":
        make = lambda n, s, tf: det.ShapesDetection(n, image_size=data_cfg.get("shapes_size", 64), seed=s,  # noqa: E731
                                                     max_objects=data_cfg.get("max_objects", 3), transforms=tf)
        return {"train": make(data_cfg["train_size"], seed, train_tf),
                "val": make(data_cfg["val_size"], 10_000 + seed, eval_tf) if data_cfg.get("val_size") else None,
                "test": make(data_cfg["test_size"], 20_000, eval_tf)}  # one fixed test set for every seed
    root = data_cfg.get("root")
    if not root or not Path(str(root)).exists():
        raise ConfigError(f"data={data_cfg.get('name')}: data.root={root!r} does not exist; pass data.root=/path/to/"
                          f"{data_cfg.get('name')} (see configs/data/{data_cfg.get('name')}.yaml)")
    if fmt == "pennfudan":
        return {"train": det.PennFudan(root, "train", train_tf), "val": None, "test": det.PennFudan(root, "test", eval_tf)}
    if fmt == "coco":
        splits = {}
        for split in ("train", "val", "test"):
            spec = data_cfg.get(split)
            splits[split] = None if not spec else det.CocoDetection(
                Path(root) / spec["annotations"], Path(root) / spec["images"],
                transforms=train_tf if split == "train" else eval_tf)
        return splits
    if fmt == "voc":
        year = str(data_cfg.get("year", "2012"))
        download = bool(data_cfg.get("download", False))
        return {"train": det.VOCDetection(root, year, "train", download, train_tf),
                "val": det.VOCDetection(root, year, "val", download, eval_tf), "test": None}
    raise ConfigError(f"data.format={fmt!r}; valid for task=detection: shapes, coco, pennfudan, voc")


class DetectionTask(Task):
    name = "detection"
    primary_metric, secondary_metrics = "map", ("ap50",)
    summary_keys = ("train_loss", "val_map", "val_ap50", "test_map", "test_ap50", "train_images_per_s")

    def backbone_options(self, backbone_cfg) -> dict[str, Any]:
        # timm ViTs resize their position embeddings for any input size; open_clip towers keep theirs (fixed size)
        name = str(backbone_cfg.get("name") or backbone_cfg.get("model_name") or "")
        return {} if name.startswith("open_clip:") or "_target_" in backbone_cfg else {"dynamic_img_size": True}

    def build_data(self, data_cfg, data_config, seed):
        size = int(data_cfg.get("image_size") or data_config["input_size"][1])
        splits = _datasets(dict(data_cfg), size, seed)
        if splits["train"] is None:
            raise ConfigError(f"data={data_cfg.get('name')} has no training split")
        return DetectionData(splits["train"], splits["val"], splits["test"], splits["train"].class_names)

    def build_model(self, cfg, backbone, data):
        task = OmegaConf.to_container(cfg.task, resolve=True)
        prompt = PromptConfig.from_dict(OmegaConf.to_container(cfg.prompt, resolve=True))
        torch.manual_seed(int(cfg.seed))
        encoder = PromptedModel(backbone, prompt, num_classes=0, class_names=None)
        size = cfg.data.get("image_size") or encoder.input_size[1]
        from .detector_model import DetectorModel

        return DetectorModel.build(encoder, data.class_names, detector_config(task, int(size)))

    def load_prompt_file(self, path, pretrained: Any = None, backbone=None):
        from .detector_model import DetectorModel

        return DetectorModel.from_prompt_file(path, backbone=backbone, pretrained=pretrained or None)

    def check_eval_data(self, model, data, dataset_name: str) -> None:
        if list(model.class_names) != list(data.class_names):
            raise ConfigError(f"the prompt file detects {model.class_names} but data={dataset_name} has "
                              f"{data.class_names}; evaluate on the dataset it was trained for")

    def training_loss(self, model, batch, trainer_cfg):
        images, targets = batch
        losses = model(images, targets)
        loss = sum(losses.values())
        return loss, len(images), {f"{name}_sum": value.detach() * len(images) for name, value in losses.items()}

    def epoch_summary(self, sums, seen):
        parts = {f"train_{k[:-4]}": v / seen for k, v in sums.items() if k.endswith("_sum")}
        return {"train_loss": sums["loss"] / seen, **parts}

    @torch.no_grad()
    def evaluate(self, model, loader, data, autocast, limit, split, run_dir):
        from . import coco_evaluate, draw_predictions, predictions_to_coco, write_predictions

        dataset = getattr(data, split)
        was_training = model.training
        model.eval()
        outputs, ids, drawn = [], [], []
        for images, targets in limited(loader, limit):
            with autocast():
                predictions = model(images)
            predictions = [{k: v.float().cpu() for k, v in p.items()} for p in predictions]
            outputs += predictions
            ids += [int(t["image_id"]) for t in targets]
            if len(drawn) < DRAWN_IMAGES:
                drawn += list(zip(images, predictions, targets))[:DRAWN_IMAGES - len(drawn)]
        model.train(was_training)
        results = predictions_to_coco(outputs, ids, dataset.category_ids)
        coco = dataset.to_coco()
        seen = set(ids)
        coco = {**coco, "images": [i for i in coco["images"] if i["id"] in seen],
                "annotations": [a for a in coco["annotations"] if a["image_id"] in seen]}
        metrics = coco_evaluate(coco, results)
        if run_dir is not None:
            write_predictions(Path(run_dir) / predictions_file(split), results)
            for n, (image, prediction, target) in enumerate(drawn):
                draw_predictions(image.cpu(), prediction, {k: v.cpu() if torch.is_tensor(v) else v for k, v in target.items()},
                                 Path(run_dir) / predictions_folder(split) / f"{n}.png", class_names=data.class_names)
        return {**metrics, "count": len(ids)}


def detector_config(task: dict[str, Any], size: int) -> dict[str, Any]:
    return {"detector": task.get("detector", "faster_rcnn"), "min_size": task.get("min_size") or size,
            "max_size": task.get("max_size") or size, "pyramid_channels": int(task.get("pyramid_channels", 256)),
            "pyramid_scales": [float(x) for x in task.get("pyramid_scales") or (4.0, 2.0, 1.0, 0.5)],
            "detector_kwargs": dict(task.get("detector_kwargs") or {})}


register_task(DetectionTask())
