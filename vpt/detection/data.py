"""Detection datasets: one record per image, served as (tv_tensors.Image, target) and exported as COCO.

Every dataset returns ``(image, target)``: ``image`` a ``tv_tensors.Image`` (uint8, 3 x H x W) and ``target``
``{"boxes": tv_tensors.BoundingBoxes (XYXY, pixels), "labels": int64 1..K, "image_id": int}``. Labels are
contiguous (0 is the detector's background); ``category_ids[label]`` is the dataset's own category id, which
``to_coco()`` and the COCO results files use. Crowd (and VOC "difficult") boxes are not training targets but
stay in ``to_coco()`` with ``iscrowd=1``, where COCO evaluation ignores detections that match them.
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from ..errors import ConfigError
from ..files import atomic_write, atomic_write_json
from .io import png_bytes, read_rgb

Transforms = Callable[[Any, Any], tuple[Any, Any]]


@dataclass
class ImageRecord:
    """One image and its boxes (XYXY pixels, already clipped to the image)."""

    image_id: int
    file_name: str
    width: int
    height: int
    boxes: list[list[float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)  # contiguous 1..K
    iscrowd: list[int] = field(default_factory=list)
    areas: list[float] | None = None  # the source's areas (COCO segment areas); None: box areas
    path: Path | None = None  # None: the dataset holds the pixels itself

    @property
    def num_targets(self) -> int:
        return sum(1 for crowd in self.iscrowd if not crowd)


class DetectionDataset(Dataset):
    """Base class: subclasses fill ``records``, ``category_ids`` and ``class_names``."""

    def __init__(self, records: list[ImageRecord], category_ids: Mapping[int, int], class_names: Sequence[str],
                 transforms: Transforms | None = None) -> None:
        self.records = records
        self.category_ids = dict(category_ids)  # contiguous label (1..K) -> dataset category id
        self.class_names = list(class_names)  # index label - 1
        self.transforms = transforms

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.records)

    def load_image(self, index: int) -> torch.Tensor:
        """uint8 (3, H, W) pixels of record ``index`` (RGB)."""
        record = self.records[index]
        try:
            pixels = read_rgb(record.path)
        except OSError as err:  # PIL's UnidentifiedImageError is an OSError
            raise ConfigError(f"cannot read image {record.path}: {err}; replace or remove the file") from err
        if tuple(pixels.shape[-2:]) != (record.height, record.width):
            raise ConfigError(f"{record.path} is {pixels.shape[-1]}x{pixels.shape[-2]} pixels but its annotation says "
                              f"{record.width}x{record.height}; fix the annotation's width/height")
        return pixels

    def target(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        keep = [i for i, crowd in enumerate(record.iscrowd) if not crowd]
        boxes = torch.tensor([record.boxes[i] for i in keep], dtype=torch.float32).reshape(-1, 4)
        return {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(record.height, record.width)),
            "labels": torch.tensor([record.labels[i] for i in keep], dtype=torch.int64),
            "image_id": record.image_id,
        }

    def __getitem__(self, index: int):
        image, target = tv_tensors.Image(self.load_image(index)), self.target(index)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def to_coco(self) -> dict[str, Any]:
        """COCO ground truth (dataset category ids, boxes as [x, y, w, h]) for pycocotools."""
        images, annotations = [], []
        for record in self.records:
            images.append({"id": record.image_id, "file_name": record.file_name,
                           "width": record.width, "height": record.height})
            for i, (box, label) in enumerate(zip(record.boxes, record.labels)):
                w, h = box[2] - box[0], box[3] - box[1]
                area = record.areas[i] if record.areas is not None else w * h
                annotations.append({"id": len(annotations) + 1, "image_id": record.image_id,
                                    "category_id": self.category_ids[label], "bbox": [box[0], box[1], w, h],
                                    "area": area, "iscrowd": int(record.iscrowd[i])})
        categories = [{"id": self.category_ids[label], "name": name}
                      for label, name in enumerate(self.class_names, start=1)]
        return {"info": {"description": type(self).__name__}, "images": images, "annotations": annotations,
                "categories": categories}


def write_coco(dataset: DetectionDataset, directory: str | Path) -> Path:
    """Write ``dataset`` as ``directory/images/<file_name>`` PNGs + ``directory/annotations.json``; returns the json.

    File names become ``<image_id>.png`` so that any dataset (whatever its own names) round-trips.
    """
    directory = Path(directory)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    coco = dataset.to_coco()
    for index, image in enumerate(coco["images"]):
        image["file_name"] = f"{image['id']}.png"
        atomic_write(directory / "images" / image["file_name"], png_bytes(dataset.load_image(index)))
    path = directory / "annotations.json"
    atomic_write_json(path, coco, indent=None)
    return path


# ---- COCO json + image folder ---------------------------------------------------------------
def _load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"annotation file {path} does not exist; pass the path of a COCO-format json")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} is not valid JSON ({err}); pass a COCO-format annotation file") from err
    missing = [key for key in ("images", "annotations", "categories") if not isinstance(data.get(key), list)]
    if missing:
        raise ConfigError(f"{path} has no {', '.join(missing)} list(s); a COCO annotation file needs images, "
                          "annotations and categories")
    return data


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:  # reads the header only
        return image.size


@dataclass
class _Checks:
    """What validating a COCO file found: fatal problems (lists) and repairs (counts)."""

    missing_files: list[str] = field(default_factory=list)
    unknown_categories: set[int] = field(default_factory=set)
    unknown_images: set[int] = field(default_factory=set)
    malformed: list[int] = field(default_factory=list)
    nameless_images: int = 0
    clipped: int = 0
    degenerate: int = 0

    def fatal_message(self, path: Path, image_dir: Path) -> str | None:
        def few(items) -> str:
            items = sorted(items)
            return ", ".join(map(str, items[:5])) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")

        problems = []
        if self.missing_files:
            problems.append(f"{len(self.missing_files)} image file(s) missing from {image_dir}: "
                            f"{few(self.missing_files)} (fix image_dir, or remove those images from the json)")
        if self.unknown_categories:
            problems.append(f"annotations use category id(s) {few(self.unknown_categories)} that 'categories' does "
                            "not list (add them to 'categories', or remove those annotations)")
        if self.unknown_images:
            problems.append(f"annotations name image id(s) {few(self.unknown_images)} that 'images' does not list "
                            "(add the images, or remove those annotations)")
        if self.nameless_images:
            problems.append(f"{self.nameless_images} 'images' entr(ies) lack an 'id' or 'file_name' (add them)")
        if self.malformed:
            problems.append(f"annotation(s) {few(self.malformed)} have no 4-number finite 'bbox' [x, y, w, h] "
                            "(fix or remove them)")
        return f"{path}: " + "; ".join(problems) if problems else None


def _clip_box(bbox: Sequence[float], width: int, height: int) -> tuple[list[float], bool]:
    x, y, w, h = (float(v) for v in bbox)
    clipped = [min(max(x, 0.0), width), min(max(y, 0.0), height),
               min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)]
    return clipped, clipped != [x, y, x + w, y + h]


def _valid_bbox(bbox: Any) -> bool:
    return (isinstance(bbox, (list, tuple)) and len(bbox) == 4
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox))


def _coco_records(data: dict[str, Any], image_dir: Path, labels: Mapping[int, int],
                  checks: _Checks) -> list[ImageRecord]:
    records: dict[int, ImageRecord] = {}
    for image in data["images"]:
        if "id" not in image or "file_name" not in image:
            checks.nameless_images += 1
            continue
        path = image_dir / image["file_name"]
        if not path.is_file():
            checks.missing_files.append(image["file_name"])
            continue
        width, height = (image["width"], image["height"]) if "width" in image and "height" in image \
            else _image_size(path)
        records[image["id"]] = ImageRecord(int(image["id"]), image["file_name"], int(width), int(height),
                                           areas=[], path=path)
    known_images = {image.get("id") for image in data["images"]}
    for ann in data["annotations"]:
        if ann.get("category_id") not in labels:
            checks.unknown_categories.add(ann.get("category_id"))
        elif ann.get("image_id") not in known_images:
            checks.unknown_images.add(ann.get("image_id"))
        elif not _valid_bbox(ann.get("bbox")):
            checks.malformed.append(ann.get("id"))
        elif ann["image_id"] in records:
            _add_box(records[ann["image_id"]], ann, labels, checks)
    return list(records.values())


def _add_box(record: ImageRecord, ann: dict[str, Any], labels: Mapping[int, int], checks: _Checks) -> None:
    box, clipped = _clip_box(ann["bbox"], record.width, record.height)
    if box[2] <= box[0] or box[3] <= box[1]:  # no width or height (after clipping): dropped, as torchvision's refs
        checks.degenerate += 1
        return
    checks.clipped += clipped
    record.boxes.append(box)
    record.labels.append(labels[ann["category_id"]])
    record.iscrowd.append(int(ann.get("iscrowd", 0)))
    record.areas.append(float(ann.get("area", (box[2] - box[0]) * (box[3] - box[1]))))


class CocoDetection(DetectionDataset):
    """A COCO-format annotation json + an image folder, checked before training starts.

    Fatal (one ConfigError naming the file and the fix): missing image files, unknown category or image ids,
    malformed bboxes. Repaired, counted in ``report`` and warned about: boxes reaching outside the image are
    clipped to it (as COCO tools do); boxes with no width or height (after clipping) are dropped. Images without
    boxes are kept (``report["images_without_boxes"]``). Labels 1..K follow the sorted category ids.
    """

    def __init__(self, annotation_json: str | Path, image_dir: str | Path,
                 transforms: Transforms | None = None) -> None:
        path, image_dir = Path(annotation_json), Path(image_dir)
        data = _load_json(path)
        categories = sorted(data["categories"], key=lambda c: c["id"])
        labels = {c["id"]: label for label, c in enumerate(categories, start=1)}
        if not image_dir.is_dir():
            raise ConfigError(f"image folder {image_dir} (for {path}) does not exist; pass the folder holding "
                              "the images the json's file_name entries name")
        checks = _Checks()
        records = _coco_records(data, image_dir, labels, checks)
        fatal = checks.fatal_message(path, image_dir)
        if fatal:
            raise ConfigError(fatal)
        super().__init__(records, {label: cid for cid, label in labels.items()},
                         [c.get("name", str(c["id"])) for c in categories], transforms)
        self.report = {"images": len(records), "boxes": sum(len(r.boxes) for r in records),
                       "clipped_boxes": checks.clipped, "dropped_degenerate_boxes": checks.degenerate,
                       "images_without_boxes": sum(1 for r in records if not r.boxes)}
        if checks.clipped or checks.degenerate:
            warnings.warn(f"{path}: clipped {checks.clipped} box(es) reaching outside their image to the image; "
                          f"dropped {checks.degenerate} degenerate box(es) with no width or height", stacklevel=2)
