"""``vpt-bench --task detection``: train / inference images/s and peak memory of a prompted detector.

Frozen encoder (pyramid + detector train), VPT-deep and full fine-tuning on the same backbone, one stated input
size, synthetic images with a few boxes each (data on the device: the benchmark measures the model).
"""
from __future__ import annotations

from typing import Any

import torch

from .runtime import autocast, median, prepare_worker, time_with_peak_memory

DETECTION_METHODS = ("linear", "deep", "full")


def detection_batch(spec: dict[str, Any], device: str) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    size, images, targets = spec["img_size"], [], []
    for _ in range(spec["batch_size"]):
        images.append(torch.rand(3, size, size, generator=g).to(device))
        corner = torch.randint(0, size // 2, (3, 2), generator=g).float()
        extent = torch.randint(size // 8, size // 2, (3, 2), generator=g).float()
        boxes = torch.cat([corner, (corner + extent).clamp(max=size - 1)], dim=1)
        targets.append({"boxes": boxes.to(device), "labels": torch.randint(1, 4, (3,), generator=g).to(device)})
    return images, targets


def build_detector(spec: dict[str, Any], method: str):
    import vpt
    from ...detection.detector_model import DetectorModel
    from .models import backbone_kwargs, prompt_config, quiet_random_weights

    with quiet_random_weights():
        backbone = vpt.create_backbone(spec["backbone"], pretrained=False, dynamic_img_size=True,
                                       **backbone_kwargs(spec))
    encoder = vpt.PromptedModel(backbone, prompt_config(spec, method), num_classes=0)
    settings = {"detector": spec.get("detector", "faster_rcnn"), "min_size": spec["img_size"],
                "max_size": spec["img_size"], "pyramid_channels": spec.get("pyramid_channels", 256),
                "pyramid_scales": [4.0, 2.0, 1.0, 0.5], "detector_kwargs": {}}
    return DetectorModel.build(encoder, ["a", "b", "c"], settings)


def worker_detection(spec: dict[str, Any]) -> dict[str, Any]:
    """One method's detection row: train step (loss dict summed, backward, SGD step) and eval forward."""
    prepare_worker(spec)
    device, precision, method = spec["device"], spec["precision"], spec["method"]
    model = build_detector(spec, method).to(device)
    images, targets = detection_batch(spec, device)
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=1e-4, momentum=0.9)

    def train() -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            loss = sum(model(images, targets).values())
        loss.backward()
        optimizer.step()

    def infer() -> None:
        model.eval()
        with torch.no_grad(), autocast(device, precision):
            model(images)

    times, memory = time_with_peak_memory({"train": train, "forward": infer}, spec, device)
    bs, train_t, fwd_t = spec["batch_size"], median(times["train"]), median(times["forward"])
    summary = model.param_summary()
    return {"method": method, "trainable_params": summary["trainable"], "total_params": summary["total"], **memory,
            "train_step_s": train_t, "forward_s": fwd_t, "train_img_s": bs / train_t, "infer_img_s": bs / fwd_t,
            "train_times_s": times["train"], "forward_times_s": times["forward"]}


def format_detection_table(results: dict[str, Any]) -> str:
    cfg, rows = results["config"], results["methods"]
    lines = [f"vpt-bench --task detection  backbone={cfg['backbone']}  img={cfg['img_size']}  batch={cfg['batch_size']}  "
             f"precision={cfg['precision']}  device={cfg['device']}  detector={cfg.get('detector', 'faster_rcnn')}",
             f"{'method':8} {'trainable':>11} {'train img/s':>11} {'infer img/s':>11} {'step/frozen':>11} "
             f"{'peak MB':>9} {'mem/full':>8}", "-" * 76]
    frozen, full = rows.get("linear", {}), rows.get("full", {})
    for method, row in rows.items():
        if "error" in row:
            lines.append(f"{method:8} error: {row['error'].splitlines()[0]}")
            continue
        ratio = row["train_step_s"] / frozen["train_step_s"] if "train_step_s" in frozen else float("nan")
        mem = row["peak_mem_bytes"] / full["peak_mem_bytes"] if full.get("peak_mem_bytes") else float("nan")
        lines.append(f"{method:8} {row['trainable_params']:>11,} {row['train_img_s']:>11.2f} {row['infer_img_s']:>11.2f} "
                     f"{ratio:>11.2f} {row['peak_mem_bytes'] / 2**20:>9,.0f} {mem:>8.2f}")
    return "\n".join(lines)
