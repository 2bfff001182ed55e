"""Pascal VOC detection through ``torchvision.datasets.VOCDetection`` (its files, split lists and XML parser)."""
from __future__ import annotations

from pathlib import Path
from xml.etree.ElementTree import ParseError, parse

from ..errors import ConfigError
from .data import DetectionDataset, ImageRecord, Transforms

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # labels and category ids 1..20 in this order


def _torchvision_voc(root: Path, year: str, image_set: str, download: bool):
    from torchvision.datasets import VOCDetection as TorchvisionVOC

    try:
        return TorchvisionVOC(str(root), year=year, image_set=image_set, download=download)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
        raise ConfigError(f"Pascal VOC {year} not found under data.root={str(root)!r} (no VOCdevkit/VOC{year}); "
                          "pass data.download=true to fetch it, or point data.root at the folder holding "
                          "VOCdevkit/") from err
    except FileNotFoundError as err:
        raise ConfigError(f"Pascal VOC {year} under {root} has no split list {err.filename}; "
                          "use an image_set it has (train, val, trainval) or re-download it") from err
    except ValueError as err:  # torchvision's verify_str_arg on year / image_set
        raise ConfigError(f"Pascal VOC: {err}") from err


def _record(index: int, image: str, annotation: str) -> ImageRecord:
    from torchvision.datasets import VOCDetection as TorchvisionVOC

    try:
        tree = TorchvisionVOC.parse_voc_xml(parse(annotation).getroot())["annotation"]
    except (OSError, ParseError) as err:
        raise ConfigError(f"cannot read VOC annotation {annotation}: {err}; restore the file") from err
    record = ImageRecord(index + 1, Path(image).name, int(tree["size"]["width"]), int(tree["size"]["height"]),
                         path=Path(image))
    for obj in tree.get("object", []):
        if obj["name"] not in VOC_CLASSES:
            raise ConfigError(f"{annotation}: unknown class {obj['name']!r}; VOC classes are {', '.join(VOC_CLASSES)}")
        bndbox = obj["bndbox"]  # 1-based first/last pixel, as Penn-Fudan: [xmin - 1, xmax] in 0-based pixels
        record.boxes.append([float(bndbox["xmin"]) - 1, float(bndbox["ymin"]) - 1,
                             float(bndbox["xmax"]), float(bndbox["ymax"])])
        record.labels.append(VOC_CLASSES.index(obj["name"]) + 1)
        record.iscrowd.append(int(obj.get("difficult", "0") == "1"))  # ignored in evaluation, as VOC's own
    return record


class VOCDetection(DetectionDataset):
    """Pascal VOC ``year`` / ``image_set`` (torchvision's layout under ``root``: VOCdevkit/VOC<year>/).

    Image ids are 1..N in the split list's order. "difficult" objects are not training targets and are
    ``iscrowd=1`` in ``to_coco()``, so COCO evaluation neither rewards nor penalises detecting them.
    """

    def __init__(self, root: str | Path, year: str = "2012", image_set: str = "train", download: bool = False,
                 transforms: Transforms | None = None) -> None:
        voc = _torchvision_voc(Path(root).expanduser(), str(year), image_set, download)
        missing = [image for image in voc.images if not Path(image).is_file()]
        if missing:
            raise ConfigError(f"{len(missing)} image(s) of VOC {year} {image_set} are missing, e.g. {missing[0]}; "
                              "pass data.download=true to fetch the dataset again")
        records = [_record(i, image, note) for i, (image, note) in enumerate(zip(voc.images, voc.annotations))]
        super().__init__(records, {label: label for label in range(1, len(VOC_CLASSES) + 1)}, VOC_CLASSES,
                         transforms)
