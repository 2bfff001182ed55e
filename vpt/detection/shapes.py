"""ShapesDetection: a small synthetic detection set generated in memory (tests, quickstart, offline)."""
from __future__ import annotations

import torch

from ..errors import ConfigError
from .data import DetectionDataset, ImageRecord, Transforms

SHAPE_NAMES = ("rectangle", "ellipse", "triangle")  # labels 1, 2, 3 (also the category ids)


def _shape_mask(kind: str, size: int, box: tuple[int, int, int, int]) -> torch.Tensor:
    """(size, size) bool mask of a shape inscribed in ``box`` (x0, y0, x1, y1), tested at pixel centres."""
    x0, y0, x1, y1 = box
    ys = torch.arange(size, dtype=torch.float32).view(-1, 1) + 0.5
    xs = torch.arange(size, dtype=torch.float32).view(1, -1) + 0.5
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    if kind == "rectangle":
        return (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
    if kind == "ellipse":
        return ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1
    # triangle with its apex at the top centre and its base on the box's bottom edge
    return (ys >= y0) & (ys < y1) & ((xs - cx).abs() <= (ys - y0) / (y1 - y0) * rx)


def _tight_box(mask: torch.Tensor) -> list[float]:
    rows, cols = mask.any(dim=1).nonzero().flatten(), mask.any(dim=0).nonzero().flatten()
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]


def _overlaps(box: tuple[int, int, int, int], others: list[tuple[int, int, int, int]], margin: int = 1) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 < b[2] + margin and b[0] < x1 + margin and y0 < b[3] + margin and b[1] < y1 + margin
               for b in others)


def _render(generator: torch.Generator, size: int, max_objects: int) -> tuple[torch.Tensor, list, list]:
    """One image: dark noise with 1..max_objects non-overlapping bright shapes; their tight boxes and labels."""
    def draw(low: int, high: int, shape: tuple[int, ...] = ()) -> torch.Tensor:
        return torch.randint(low, high, shape, generator=generator)

    pixels = draw(0, 96, (3, size, size)).to(torch.uint8)
    wanted, placed, boxes, labels = int(draw(1, max_objects + 1)), [], [], []
    for _ in range(20 * max_objects):  # rejection sampling: a crowded image just gets fewer shapes
        if len(placed) == wanted:
            break
        w, h = int(draw(size // 5, size // 2 + 1)), int(draw(size // 5, size // 2 + 1))
        x0, y0 = int(draw(0, size - w + 1)), int(draw(0, size - h + 1))
        box = (x0, y0, x0 + w, y0 + h)
        if _overlaps(box, placed):
            continue
        label = int(draw(0, len(SHAPE_NAMES))) + 1
        mask = _shape_mask(SHAPE_NAMES[label - 1], size, box)
        pixels[:, mask] = draw(128, 256, (3, 1)).to(torch.uint8)
        placed.append(box)
        boxes.append(_tight_box(mask))
        labels.append(label)
    return pixels, boxes, labels


class ShapesDetection(DetectionDataset):
    """``num_images`` square images with rectangles, ellipses and triangles (3 classes) in random bright colours
    on dark noise; boxes are the shapes' tight pixel extents. The same ``seed`` gives the same images."""

    def __init__(self, num_images: int, image_size: int = 64, seed: int = 0, max_objects: int = 3,
                 transforms: Transforms | None = None) -> None:
        if num_images < 1 or max_objects < 1 or image_size < 16:
            raise ConfigError(f"ShapesDetection needs num_images >= 1, max_objects >= 1 and image_size >= 16 "
                              f"(got {num_images}, {max_objects}, {image_size})")
        generator = torch.Generator().manual_seed(seed)
        self._pixels, records = [], []
        for index in range(num_images):
            pixels, boxes, labels = _render(generator, image_size, max_objects)
            self._pixels.append(pixels)
            records.append(ImageRecord(index + 1, f"{index + 1}.png", image_size, image_size, boxes, labels,
                                       [0] * len(boxes)))
        super().__init__(records, {label: label for label in range(1, len(SHAPE_NAMES) + 1)}, SHAPE_NAMES,
                         transforms)

    def load_image(self, index: int) -> torch.Tensor:
        return self._pixels[index].clone()
