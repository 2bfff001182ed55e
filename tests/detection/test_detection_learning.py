"""A short run on synthetic shapes learns: the end-to-end check that prompts + pyramid + detector train."""
import time

import torch
from torch.utils.data import DataLoader

from vpt.detection import (PromptedDetector, ShapesDetection, coco_evaluate, collate_detection, eval_transforms,
                           predictions_to_coco, train_transforms)

STEPS = 150


def _evaluate(detector, dataset) -> dict[str, float]:
    detector.eval()
    outputs, image_ids = [], []
    with torch.no_grad():
        for images, targets in DataLoader(dataset, batch_size=16, collate_fn=collate_detection):
            outputs += detector(images)
            image_ids += [t["image_id"] for t in targets]
    return coco_evaluate(dataset.to_coco(), predictions_to_coco(outputs, image_ids, dataset.category_ids))


def test_vpt_deep_faster_rcnn_learns_shapes(make_encoder):
    encoder = make_encoder(prompt="deep", length=4)  # random-init frozen ViT: only prompts, pyramid, heads learn
    detector = PromptedDetector(encoder, 3, "faster_rcnn", min_size=64, max_size=64, pyramid_channels=32,
                                pyramid_scales=(2.0, 1.0, 0.5), representation_size=128,
                                rpn_batch_size_per_image=64, box_batch_size_per_image=32,  # fewer RoIs:
                                rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=300,  # CPU RoIAlign is
                                rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=100)  # the slow part
    train = ShapesDetection(256, seed=1, transforms=train_transforms(flip_p=0.5))
    test = ShapesDetection(48, seed=2, transforms=eval_transforms())
    before = _evaluate(detector, test)

    start = time.perf_counter()
    optimizer = torch.optim.AdamW(detector.trainable_parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 3e-3, total_steps=STEPS, pct_start=0.1)
    loader = DataLoader(train, batch_size=8, shuffle=True, collate_fn=collate_detection,
                        generator=torch.Generator().manual_seed(0))
    detector.train()
    step = 0
    while step < STEPS:
        for images, targets in loader:
            loss = sum(detector(images, targets).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if step == STEPS:
                break
    seconds = time.perf_counter() - start
    after = _evaluate(detector, test)

    summary = f"AP50 untrained {before['ap50']:.3f} -> trained {after['ap50']:.3f} (mAP {after['map']:.3f}) " \
              f"after {STEPS} steps in {seconds:.0f} s"
    print(summary)
    assert after["ap50"] >= 0.5 and after["ap50"] >= before["ap50"] + 0.4, summary
    assert after["map"] >= before["map"] + 0.2, summary
