import contextlib
import io
import json

import pytest
import torch
from vpt.detection.evaluation import coco_evaluate, draw_predictions, predictions_to_coco, write_predictions
from vpt.detection.io import read_rgb
from vpt.errors import ConfigError

# one 100 x 80 image, two objects of category 5 ("box"); category ids are the dataset's, not 1..K
GT = {
    "images": [{"id": 42, "file_name": "a.png", "width": 100, "height": 80}],
    "annotations": [
        {"id": 1, "image_id": 42, "category_id": 5, "bbox": [10, 10, 30, 20], "area": 600, "iscrowd": 0},
        {"id": 2, "image_id": 42, "category_id": 5, "bbox": [50, 40, 40, 30], "area": 1200, "iscrowd": 0},
    ],
    "categories": [{"id": 5, "name": "box"}],
}


def _prediction(boxes, scores, labels=None):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "scores": torch.tensor(scores),
            "labels": torch.tensor(labels or [1] * len(boxes))}


def test_perfect_predictions_score_one():
    outputs = [_prediction([[10, 10, 40, 30], [50, 40, 90, 70]], [0.9, 0.8])]
    metrics = coco_evaluate(GT, predictions_to_coco(outputs, [42], {1: 5}))
    assert metrics == pytest.approx({"map": 1.0, "ap50": 1.0, "ap75": 1.0, "ar100": 1.0})


def test_one_of_two_found_with_a_worse_ranked_false_positive():
    # ranked: exact hit on object 1 (0.9), then a box on nothing (0.5); object 2 missed.
    # precision/recall: (1.0, 0.5), (0.5, 0.5). COCO's 101-point interpolated precision is 1 at recall 0..0.50
    # (51 points) and 0 above, so AP = 51/101 at every IoU threshold; recall 1/2.
    outputs = [_prediction([[10, 10, 40, 30], [0, 60, 8, 78]], [0.9, 0.5])]
    results = predictions_to_coco(outputs, [42], {1: 5})
    metrics = coco_evaluate(GT, results)
    assert metrics == pytest.approx({"map": 51 / 101, "ap50": 51 / 101, "ap75": 51 / 101, "ar100": 0.5})
    assert metrics == pytest.approx(_pycocotools_directly(GT, results))


def test_a_partial_overlap_counts_at_the_iou_thresholds_it_reaches():
    # one object, one box covering 72% of it (IoU 0.72): a hit at IoU 0.50, 0.55, ..., 0.70 (5 of 10 thresholds)
    gt = {**GT, "annotations": GT["annotations"][:1]}
    results = predictions_to_coco([_prediction([[10, 10, 40, 24.4]], [0.7])], [42], {1: 5})
    metrics = coco_evaluate(gt, results)
    assert metrics == pytest.approx({"map": 0.5, "ap50": 1.0, "ap75": 0.0, "ar100": 0.5})
    assert metrics == pytest.approx(_pycocotools_directly(gt, results))


def _pycocotools_directly(gt, results):
    """The same score, through pycocotools' file-based API with no vpt code in between."""
    import tempfile
    from pathlib import Path

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stdout(io.StringIO()):
        Path(folder, "gt.json").write_text(json.dumps(gt))
        Path(folder, "dt.json").write_text(json.dumps(results))
        coco = COCO(str(Path(folder, "gt.json")))
        evaluator = COCOeval(coco, coco.loadRes(str(Path(folder, "dt.json"))), "bbox")
        evaluator.evaluate(), evaluator.accumulate(), evaluator.summarize()
    stats = evaluator.stats
    return {"map": stats[0], "ap50": stats[1], "ap75": stats[2], "ar100": stats[8]}


def test_no_predictions_score_zero_and_strangers_are_refused():
    assert coco_evaluate(GT, []) == {"map": 0.0, "ap50": 0.0, "ap75": 0.0, "ar100": 0.0}
    stranger = predictions_to_coco([_prediction([[0, 0, 5, 5]], [0.5])], [7], {1: 5})
    with pytest.raises(ConfigError, match=r"image ids \[7\]"):
        coco_evaluate(GT, stranger)


def test_predictions_use_xywh_and_dataset_category_ids():
    outputs = [_prediction([[1.5, 2, 11.5, 7]], [0.25], [2]), _prediction([], [])]
    results = predictions_to_coco(outputs, [3, 4], {1: 10, 2: 20})
    assert results == [{"image_id": 3, "category_id": 20, "bbox": [1.5, 2.0, 10.0, 5.0], "score": 0.25}]
    with pytest.raises(ConfigError, match="predicted label 3 has no dataset category"):
        predictions_to_coco([_prediction([[0, 0, 1, 1]], [0.5], [3])], [3], {1: 10, 2: 20})


def test_write_predictions_is_a_json_list(tmp_path):
    results = [{"image_id": 3, "category_id": 20, "bbox": [1.5, 2.0, 10.0, 5.0], "score": 0.25}]
    path = write_predictions(tmp_path / "predictions_test.json", results)
    assert json.loads(path.read_text()) == results
    assert [p.name for p in tmp_path.iterdir()] == ["predictions_test.json"]


def test_draw_predictions_marks_true_green_and_predicted_red(tmp_path):
    image = torch.zeros(3, 40, 60)
    target = {"boxes": torch.tensor([[5.0, 5.0, 25.0, 30.0]]), "labels": torch.tensor([1])}
    prediction = _prediction([[30, 8, 55, 35], [0, 0, 4, 4]], [0.9, 0.1])  # the second is below the threshold
    path = draw_predictions(image, prediction, target, tmp_path / "a.png", class_names=["box"])
    pixels = read_rgb(path)
    assert pixels.shape == (3, 40, 60)
    assert pixels[:, 15, 5].tolist() == [0, 255, 0]  # left edge of the true box
    assert pixels[:, 20, 55].tolist() == [255, 0, 0]  # right edge of the predicted box
    assert pixels[:, 2, 0].tolist() == [0, 0, 0]  # low-score prediction not drawn
