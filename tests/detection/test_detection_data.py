import json
import warnings

import pytest
import torch

from vpt.detection.data import CocoDetection, write_coco
from vpt.detection.io import png_bytes, read_rgb
from vpt.detection.shapes import SHAPE_NAMES, ShapesDetection
from vpt.errors import ConfigError


def test_shapes_are_deterministic_per_seed_and_boxes_are_tight():
    first, again, other = ShapesDetection(6, seed=3), ShapesDetection(6, seed=3), ShapesDetection(6, seed=4)
    assert all(torch.equal(first[i][0], again[i][0]) for i in range(6))
    assert first.to_coco() == again.to_coco() != other.to_coco()
    assert first.class_names == list(SHAPE_NAMES) and first.category_ids == {1: 1, 2: 2, 3: 3}
    image, target = first[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 64, 64)
    assert target["labels"].dtype == torch.int64 and target["image_id"] == 1
    bright = (image >= 128).all(dim=0)  # shapes are bright (>= 128 in every channel), the noise dark (< 96)
    for box in target["boxes"].tolist():
        x0, y0, x1, y1 = (int(v) for v in box)
        # around each box, 1 px wider (shapes are placed at least 1 px apart), the bright pixels span the box
        top, left = max(y0 - 1, 0), max(x0 - 1, 0)
        near = bright[top:y1 + 1, left:x1 + 1]
        rows, cols = near.any(dim=1).nonzero().flatten(), near.any(dim=0).nonzero().flatten()
        assert [left + cols[0], top + rows[0], left + cols[-1] + 1, top + rows[-1] + 1] == [x0, y0, x1, y1]


def test_coco_round_trip_keeps_boxes_labels_ids_and_pixels(tmp_path):
    shapes = ShapesDetection(5, seed=1)
    path = write_coco(shapes, tmp_path)
    loaded = CocoDetection(path, tmp_path / "images")
    assert len(loaded) == 5 and loaded.class_names == shapes.class_names
    assert loaded.category_ids == shapes.category_ids
    assert loaded.report == {"images": 5, "boxes": sum(len(r.boxes) for r in shapes.records), "clipped_boxes": 0,
                             "dropped_degenerate_boxes": 0, "images_without_boxes": 0}
    for index in range(5):
        (image_a, target_a), (image_b, target_b) = shapes[index], loaded[index]
        assert torch.equal(image_a, image_b)
        assert target_a["boxes"].tolist() == target_b["boxes"].tolist()
        assert target_a["labels"].tolist() == target_b["labels"].tolist()
        assert target_a["image_id"] == target_b["image_id"]
    original, again = shapes.to_coco(), loaded.to_coco()
    assert original["annotations"] == again["annotations"] and original["categories"] == again["categories"]


def _write_images(folder, sizes):
    folder.mkdir(parents=True, exist_ok=True)
    for name, (height, width) in sizes.items():
        (folder / name).write_bytes(png_bytes(torch.zeros(3, height, width, dtype=torch.uint8)))


def _coco_file(tmp_path, annotations, images=None, categories=None):
    images = images or [{"id": 10, "file_name": "a.png", "width": 40, "height": 30},
                        {"id": 11, "file_name": "b.png", "width": 40, "height": 30}]
    categories = categories or [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def test_coco_clips_outside_boxes_drops_degenerate_ones_and_keeps_empty_images(tmp_path):
    _write_images(tmp_path / "img", {"a.png": (30, 40), "b.png": (30, 40)})
    annotations = [
        {"id": 1, "image_id": 10, "category_id": 7, "bbox": [-5, 2, 20, 10], "iscrowd": 0},  # left edge outside
        {"id": 2, "image_id": 10, "category_id": 3, "bbox": [30, 20, 20, 20], "iscrowd": 0},  # right/bottom outside
        {"id": 3, "image_id": 10, "category_id": 3, "bbox": [5, 5, 0, 8], "iscrowd": 0},  # zero width
        {"id": 4, "image_id": 10, "category_id": 7, "bbox": [45, 5, 4, 4], "iscrowd": 0},  # wholly outside
    ]
    with pytest.warns(UserWarning, match=r"clipped 2 box.*dropped 2 degenerate"):
        data = CocoDetection(_coco_file(tmp_path, annotations), tmp_path / "img")
    assert data.report == {"images": 2, "boxes": 2, "clipped_boxes": 2, "dropped_degenerate_boxes": 2,
                           "images_without_boxes": 1}
    # labels follow sorted category ids: 3 (dog) -> 1, 7 (cat) -> 2
    assert data.category_ids == {1: 3, 2: 7} and data.class_names == ["dog", "cat"]
    _, target = data[0]
    assert target["boxes"].tolist() == [[0, 2, 15, 12], [30, 20, 40, 30]]
    assert target["labels"].tolist() == [2, 1] and target["image_id"] == 10
    _, empty = data[1]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].tolist() == [] and empty["image_id"] == 11
    assert [a["bbox"] for a in data.to_coco()["annotations"]] == [[0, 2, 15, 10], [30, 20, 10, 10]]


def test_coco_fatal_problems_are_one_error_naming_the_file_and_fix(tmp_path):
    _write_images(tmp_path / "img", {"a.png": (30, 40)})  # b.png is missing
    annotations = [{"id": 1, "image_id": 10, "category_id": 99, "bbox": [0, 0, 5, 5]},
                   {"id": 2, "image_id": 12, "category_id": 7, "bbox": [0, 0, 5, 5]},
                   {"id": 3, "image_id": 10, "category_id": 7, "bbox": [0, 0, 5]}]
    path = _coco_file(tmp_path, annotations)
    with pytest.raises(ConfigError) as caught:
        CocoDetection(path, tmp_path / "img")
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert "1 image file(s) missing" in message and "b.png" in message and "fix image_dir" in message
    assert "category id(s) 99" in message and "add them to 'categories'" in message
    assert "image id(s) 12" in message and "annotation(s) 3 have no 4-number" in message
    nameless = _coco_file(tmp_path, [], images=[{"id": 1}])
    with pytest.raises(ConfigError, match="1 'images' entr"):
        CocoDetection(nameless, tmp_path / "img")


def test_coco_missing_json_and_bad_json(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        CocoDetection(tmp_path / "nope.json", tmp_path)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        CocoDetection(tmp_path / "bad.json", tmp_path)
    (tmp_path / "part.json").write_text('{"images": []}')
    with pytest.raises(ConfigError, match="no annotations, categories"):
        CocoDetection(tmp_path / "part.json", tmp_path)


def test_coco_reads_missing_sizes_from_the_file_and_checks_stated_sizes(tmp_path):
    _write_images(tmp_path / "img", {"a.png": (30, 40), "b.png": (30, 40)})
    images = [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png", "width": 50, "height": 30}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to clip or drop: no warning
        data = CocoDetection(_coco_file(tmp_path, [], images=images), tmp_path / "img")
    assert (data.records[0].width, data.records[0].height) == (40, 30)
    assert data[0][0].shape == (3, 30, 40)
    with pytest.raises(ConfigError, match="b.png is 40x30 pixels but its annotation says 50x30"):
        data[1]


def test_coco_crowd_boxes_are_evaluated_not_trained(tmp_path):
    _write_images(tmp_path / "img", {"a.png": (30, 40)})
    annotations = [{"id": 1, "image_id": 10, "category_id": 7, "bbox": [1, 1, 5, 5], "iscrowd": 1, "area": 9.0},
                   {"id": 2, "image_id": 10, "category_id": 7, "bbox": [10, 10, 5, 5]}]
    images = [{"id": 10, "file_name": "a.png", "width": 40, "height": 30}]
    data = CocoDetection(_coco_file(tmp_path, annotations, images=images), tmp_path / "img")
    assert data[0][1]["boxes"].tolist() == [[10, 10, 15, 15]]
    coco = data.to_coco()["annotations"]
    assert [(a["iscrowd"], a["area"]) for a in coco] == [(1, 9.0), (0, 25.0)]


def test_written_images_decode_to_the_same_pixels(tmp_path):
    shapes = ShapesDetection(2, image_size=32, seed=5)
    write_coco(shapes, tmp_path)
    names = json.loads((tmp_path / "annotations.json").read_text())["images"]
    assert [n["file_name"] for n in names] == ["1.png", "2.png"]
    assert torch.equal(read_rgb(tmp_path / "images" / "2.png"), shapes.load_image(1))
    assert not list(tmp_path.rglob("*.tmp"))
