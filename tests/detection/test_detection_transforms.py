import pytest
import torch
from torchvision import tv_tensors

from vpt.detection.transforms import collate_detection, eval_transforms, train_transforms
from vpt.errors import ConfigError

GRAY = 60  # background; padding added by the crop is 0, so it can be told apart


def _known_image(height=40, width=80, box=(5, 10, 25, 20)):
    """Gray image with one white rectangle covering exactly ``box`` (XYXY pixels) and its target."""
    image = torch.full((3, height, width), GRAY, dtype=torch.uint8)
    x0, y0, x1, y1 = box
    image[:, y0:y1, x0:x1] = 255
    target = {"boxes": tv_tensors.BoundingBoxes(torch.tensor([box], dtype=torch.float32), format="XYXY",
                                                canvas_size=(height, width)),
              "labels": torch.tensor([2]), "image_id": 7}
    return tv_tensors.Image(image), target


def _white_extent(image: torch.Tensor) -> list[float]:
    """Tight box of the (mostly) white pixels, from the pixels alone."""
    white = (image > 0.7).all(dim=0)
    rows, cols = white.any(1).nonzero().flatten(), white.any(0).nonzero().flatten()
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]


def test_flip_mirrors_the_box():
    image, target = _known_image()
    out_image, out = train_transforms(flip_p=1.0)(image, target)
    assert out["boxes"].tolist() == [[80 - 25, 10, 80 - 5, 20]]
    assert _white_extent(out_image) == [55, 10, 75, 20]
    assert out_image.dtype == torch.float32 and out_image.max() == 1.0
    assert out["labels"].tolist() == [2] and out["image_id"] == 7


def test_scale_jitter_at_a_fixed_scale_then_pad_to_the_square():
    image, target = _known_image()
    out_image, out = train_transforms(size=64, scale_range=(1.0, 1.0), flip_p=0.0)(image, target)
    # fit 40 x 80 into 64 x 64: factor 0.8 -> 32 x 64, box (5, 10, 25, 20) -> (4, 8, 20, 16); then the crop pads
    # 32 rows to 64 at a random offset `top` (the first non-padding row)
    assert out_image.shape == (3, 64, 64)
    top = int((out_image.sum(dim=(0, 2)) > 0).nonzero()[0])
    assert out["boxes"].tolist() == [[4, 8 + top, 20, 16 + top]]
    assert _white_extent(out_image) == out["boxes"].tolist()[0]


def test_eval_resize_scales_the_box():
    image, target = _known_image()
    out_image, out = eval_transforms(size=120)(image, target)
    assert out_image.shape == (3, 60, 120)  # longer side 80 -> 120, factor 1.5
    assert out["boxes"].tolist() == [[7.5, 15, 37.5, 30]]
    assert eval_transforms()(image, target)[1]["boxes"].tolist() == [[5, 10, 25, 20]]


@pytest.mark.parametrize("seed", range(6))
def test_random_pipeline_boxes_follow_the_pixels(seed):
    torch.manual_seed(seed)
    image, target = _known_image(box=(30, 12, 70, 34))
    out_image, out = train_transforms(size=64, scale_range=(0.5, 1.5))(image, target)
    assert out_image.shape == (3, 64, 64)
    if len(out["boxes"]):
        pixels = _white_extent(out_image)
        assert torch.allclose(out["boxes"][0].as_subclass(torch.Tensor), torch.tensor(pixels), atol=1.0), (
            out["boxes"], pixels)
    else:  # the crop cut the object away (or left a sliver SanitizeBoundingBoxes drops), labels go with it
        assert out["labels"].numel() == 0
        assert (out_image > 0.7).all(dim=0).sum() <= 64


def test_sanitize_drops_a_box_cropped_out_of_the_image():
    torch.manual_seed(0)
    kept = dropped = 0
    for _ in range(12):
        image, target = _known_image(height=64, width=128, box=(120, 20, 126, 30))
        out_image, out = train_transforms(size=64, scale_range=(2.0, 2.0), flip_p=0.0)(image, target)
        # scale 2 fits 64 x 128 into 128 x 128: unchanged; the crop keeps 64 of the 128 columns
        if len(out["boxes"]):
            kept += 1
            assert out["boxes"].tolist() == [_white_extent(out_image)]
        else:
            dropped += 1
            assert out["labels"].numel() == 0 and not (out_image > 0.7).all(dim=0).any()
    assert kept and dropped


def test_bad_scale_range_is_a_config_error():
    with pytest.raises(ConfigError, match="scale_range"):
        train_transforms(size=64, scale_range=(1.5, 0.5))


def test_collate_keeps_lists_of_different_sizes():
    batch = [_known_image(40, 80), _known_image(48, 64, box=(1, 2, 3, 4))]
    images, targets = collate_detection(batch)
    assert [tuple(i.shape) for i in images] == [(3, 40, 80), (3, 48, 64)]
    assert [t["boxes"].tolist() for t in targets] == [[[5, 10, 25, 20]], [[1, 2, 3, 4]]]
