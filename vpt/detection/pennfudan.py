"""Penn-Fudan pedestrians in the layout its authors distribute (PNGImages/, PedMasks/, Annotation/*.txt)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .data import DetectionDataset, ImageRecord, Transforms

SPLITS = ("train", "test")
SPLIT_SEED = 0
TRAIN_FRACTION = 120 / 170  # the authors' 170 images: 120 train, 50 test

_SIZE = re.compile(r"Image size \(X x Y x C\)\s*:\s*(\d+)\s*x\s*(\d+)")
_BOX = re.compile(r"Bounding box for object \d+ \"[^\"]*\" \(Xmin, Ymin\) - \(Xmax, Ymax\)\s*:\s*"
                  r"\((\d+),\s*(\d+)\)\s*-\s*\((\d+),\s*(\d+)\)")


def parse_annotation(path: Path) -> tuple[int, int, list[list[float]]]:
    """(width, height, XYXY boxes) from one PASCAL-1.00 text file.

    The files count pixels from (1, 1) and name the first and last pixel inside the box, so pixel columns
    Xmin..Xmax span [Xmin - 1, Xmax] in 0-based continuous coordinates (as detectron2 reads VOC).
    """
    text = path.read_text(errors="replace")
    size = _SIZE.search(text)
    boxes = [[float(x0) - 1, float(y0) - 1, float(x1), float(y1)] for x0, y0, x1, y1 in _BOX.findall(text)]
    if size is None or not boxes:
        raise ConfigError(f"{path} has no 'Image size' line or no 'Bounding box for object' lines; restore the "
                          "authors' Annotation/ file")
    return int(size.group(1)), int(size.group(2)), boxes


def split_names(names: list[str], split: str) -> list[str]:
    """The fixed split: names sorted, permuted by ``numpy.random.default_rng(0).permutation``; the first
    ``round(n * 120 / 170)`` are train (120 of the authors' 170), the rest test (50)."""
    ordered = sorted(names)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(ordered))
    cut = round(len(ordered) * TRAIN_FRACTION)
    chosen = order[:cut] if split == "train" else order[cut:]
    return [ordered[i] for i in chosen]


class PennFudan(DetectionDataset):
    """Penn-Fudan (Wang et al., ACCV 2007): one class, "person" (category id 1).

    ``root`` holds PNGImages/ and Annotation/ as the authors' zip unpacks them (PedMasks/ is not needed for
    boxes). Split: the images sorted by file name, then permuted with numpy's ``default_rng(0)``; the first 120
    are ``train``, the last 50 ``test`` (:func:`split_names`; the same fractions for a copy with other counts).
    """

    def __init__(self, root: str | Path, split: str = "train", transforms: Transforms | None = None) -> None:
        if split not in SPLITS:
            raise ConfigError(f"PennFudan split {split!r}: use one of {', '.join(SPLITS)}")
        root = Path(root).expanduser()
        images, notes = root / "PNGImages", root / "Annotation"
        if not images.is_dir() or not notes.is_dir():
            raise ConfigError(f"{root} has no PNGImages/ and Annotation/ folders; set data.root to the unpacked "
                              "PennFudanPed folder")
        names = [p.name for p in images.glob("*.png")]
        if not names:
            raise ConfigError(f"{images} holds no .png images; set data.root to the unpacked PennFudanPed folder")
        records = []
        for name in split_names(names, split):
            note = notes / (Path(name).stem + ".txt")
            if not note.is_file():
                raise ConfigError(f"{note} is missing for {images / name}; restore it or remove the image")
            width, height, boxes = parse_annotation(note)
            image_id = sorted(names).index(name) + 1  # ids by sorted name: the same in both splits
            records.append(ImageRecord(image_id, name, width, height, boxes, [1] * len(boxes), [0] * len(boxes),
                                       path=images / name))
        super().__init__(records, {1: 1}, ["person"], transforms)
