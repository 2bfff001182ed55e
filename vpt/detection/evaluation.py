"""COCO box metrics through pycocotools, COCO results files, and pictures of predicted vs true boxes."""
from __future__ import annotations

import contextlib
import copy
import io
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..errors import ConfigError
from ..files import atomic_write, atomic_write_json
from .io import png_bytes

METRICS = ("map", "ap50", "ap75", "ar100")
_STATS_INDEX = {"map": 0, "ap50": 1, "ap75": 2, "ar100": 8}  # positions in COCOeval.stats


def coco_evaluate(coco_gt: Mapping[str, Any], predictions: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """COCO bbox metrics: mAP@[.5:.95], AP50, AP75, AR@100 (pycocotools' COCOeval, its printing silenced).

    ``coco_gt``: a COCO ground-truth dict (``dataset.to_coco()``); ``predictions``: COCO results
    (:func:`predictions_to_coco`). No predictions at all scores 0 on every metric (COCOeval cannot load an
    empty result list). pycocotools reports -1 for a metric with no ground truth to score.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not predictions:
        return {name: 0.0 for name in METRICS}
    known = {image["id"] for image in coco_gt["images"]}
    strangers = sorted({p["image_id"] for p in predictions} - known)
    if strangers:
        raise ConfigError(f"predictions name image ids {strangers[:5]} that the ground truth does not have; "
                          "evaluate against the annotation file the predictions were made for")
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO()
        ground_truth.dataset = copy.deepcopy(dict(coco_gt))
        ground_truth.createIndex()
        detections = ground_truth.loadRes([dict(p) for p in predictions])  # loadRes writes into its input
        evaluator = COCOeval(ground_truth, detections, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(evaluator.stats[index]) for name, index in _STATS_INDEX.items()}


def predictions_to_coco(outputs: Sequence[Mapping[str, torch.Tensor]], image_ids: Sequence[int],
                        category_ids: Mapping[int, int]) -> list[dict[str, Any]]:
    """Detector outputs ({boxes XYXY, labels 1..K, scores} per image) -> COCO results: image id, the dataset's
    category id, bbox [x, y, w, h], score."""
    if len(outputs) != len(image_ids):
        raise ValueError(f"{len(outputs)} outputs for {len(image_ids)} image ids")
    results = []
    for output, image_id in zip(outputs, image_ids):
        boxes = output["boxes"].detach().cpu().double().tolist()
        for box, label, score in zip(boxes, output["labels"].tolist(), output["scores"].detach().cpu().tolist()):
            if label not in category_ids:
                raise ConfigError(f"predicted label {label} has no dataset category (known labels "
                                  f"{sorted(category_ids)}); build the detector with the dataset's num_classes")
            results.append({"image_id": int(image_id), "category_id": int(category_ids[label]),
                            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "score": float(score)})
    return results


def write_predictions(path: str | Path, results: Sequence[Mapping[str, Any]]) -> Path:
    """A COCO results json (``predictions_<split>.json``), written atomically."""
    return atomic_write_json(path, list(results), indent=None)


def draw_predictions(image: torch.Tensor, prediction: Mapping[str, torch.Tensor],
                     target: Mapping[str, torch.Tensor] | None, path: str | Path,
                     class_names: Sequence[str] | None = None, score_threshold: float = 0.3) -> Path:
    """PNG of ``image`` with true boxes in green and predicted boxes (score >= threshold) in red with scores."""
    from torchvision.utils import draw_bounding_boxes

    pixels = image.detach().cpu()
    if pixels.is_floating_point():
        pixels = (pixels.clamp(0, 1) * 255).round()
    pixels = pixels.to(torch.uint8)

    def name(label: int) -> str:
        return class_names[label - 1] if class_names and 0 < label <= len(class_names) else str(label)

    if target is not None and len(target["boxes"]):
        labels = [name(int(label)) for label in target.get("labels", torch.zeros(0)).tolist()] or None
        boxes = torch.as_tensor(target["boxes"]).as_subclass(torch.Tensor).cpu().float()
        pixels = draw_bounding_boxes(pixels, boxes, labels=labels, colors=(0, 255, 0), width=2)
    keep = prediction["scores"].detach().cpu() >= score_threshold
    if keep.any():
        captions = [f"{name(int(label))} {float(score):.2f}" for label, score in
                    zip(prediction["labels"].cpu()[keep].tolist(), prediction["scores"].cpu()[keep].tolist())]
        pixels = draw_bounding_boxes(pixels, prediction["boxes"].detach().cpu().float()[keep], labels=captions,
                                     colors=(255, 0, 0), width=1)
    return atomic_write(path, png_bytes(pixels))
