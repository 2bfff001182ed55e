"""Datasets laid out as files on disk: class folders (ImageFolder) and annotation lists (VTAB, FGVC)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..errors import ConfigError
from .sources import FileImageSource, SourceSplits
from .spec import DataSpec

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
CLASS_NAMES_FILE = "classnames.txt"
Annotations = tuple[list[str], list[int]]  # (relative paths, labels)


def require_root(spec: DataSpec, hint: str = "") -> Path:
    """``data.root`` as an existing path, or a ConfigError that says what to pass."""
    example = f"data.root=/path/to/{spec.name}"
    if spec.root is None:
        raise ConfigError(f"dataset {spec.name!r} needs its files: pass {example}{hint}")
    root = Path(spec.root).expanduser()
    if not root.exists():
        raise ConfigError(f"data root {str(root)!r} does not exist; pass {example}{hint}")
    return root


# --- class folders ------------------------------------------------------------------------------------
def _subfolders(folder: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir() and not entry.name.startswith("."))


def _scan_class_folders(folder: Path, class_names: Sequence[str]) -> FileImageSource:
    paths, labels = [], []
    for label, name in enumerate(class_names):
        class_dir = folder / name
        if not class_dir.is_dir():
            continue  # a class may be absent from val/test
        files = sorted(f for f in os.listdir(class_dir) if f.lower().endswith(IMAGE_EXTENSIONS))
        paths += [str(class_dir / f) for f in files]
        labels += [label] * len(files)
    return FileImageSource(paths, labels)


def build_imagefolder(spec: DataSpec) -> SourceSplits:
    """``root/{train,val,test}/<class>/<image>`` (val, test optional), or ``root/<class>/<image>`` as train (as
    test with ``eval_only``: a dataset only scored, e.g. ImageNet-Sketch)."""
    root = require_root(spec)
    if spec.eval_only:
        return _eval_only_folder(root, spec)
    split_dirs = {split: root / split for split in ("train", "val", "test") if (root / split).is_dir()}
    if "train" not in split_dirs:
        if split_dirs:
            raise ConfigError(f"{root} has {', '.join(split_dirs)}/ but no train/ folder of class folders")
        split_dirs = {"train": root}
    class_names = _subfolders(split_dirs["train"])
    if not class_names:
        raise ConfigError(f"no class folders in {split_dirs['train']}; expected <class>/<image> under it")
    for split in ("val", "test"):
        unknown = set(_subfolders(split_dirs[split])) - set(class_names) if split in split_dirs else set()
        if unknown:
            raise ConfigError(f"{split_dirs[split]} has classes missing from train/: {', '.join(sorted(unknown))}")
    sources = {split: _scan_class_folders(folder, class_names) for split, folder in split_dirs.items()}
    if spec.class_names_file:
        class_names = _folder_names(root, spec.class_names_file, class_names)
    if len(sources["train"]) == 0:
        raise ConfigError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in the class folders of {split_dirs['train']}")
    _refuse_empty_classes(split_dirs["train"], class_names, sources["train"].labels)
    return SourceSplits(sources["train"], sources.get("val"), sources.get("test"), class_names)


def _eval_only_folder(root: Path, spec: DataSpec) -> SourceSplits:
    test_dir = root / "test" if (root / "test").is_dir() else root
    class_names = _subfolders(test_dir)
    if not class_names:
        raise ConfigError(f"no class folders in {test_dir}; data.eval_only expects <class>/<image> under data.root")
    test = _scan_class_folders(test_dir, class_names)
    if len(test) == 0:
        raise ConfigError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in the class folders of {test_dir}")
    if spec.class_names_file:
        class_names = _folder_names(root, spec.class_names_file, class_names)
    return SourceSplits(None, None, test, class_names)


def _folder_names(root: Path, names_file: str, folders: Sequence[str]) -> list[str]:
    """The words for each class folder from ``<folder> <class name>`` lines (CoOp's ImageNet ``classnames.txt``:
    ``n01440764 tench``); relative paths are taken from root, then from its parent (CoOp keeps the file in
    ``$DATA/imagenet/`` beside ``images/``)."""
    path = Path(names_file).expanduser()
    if not path.is_absolute():
        path = next((base / path for base in (root, root.parent) if (base / path).is_file()), root / path)
    if not path.is_file():
        raise ConfigError(f"data.class_names_file {str(path)!r} does not exist; pass the file of "
                          "'<folder> <class name>' lines (CoOp's ImageNet classnames.txt)")
    names = {}
    for line in path.read_text().splitlines():
        folder, _, name = line.strip().partition(" ")
        if folder:
            names[folder] = name.strip() or folder
    missing = [folder for folder in folders if folder not in names]
    if missing:
        raise ConfigError(f"{path} names {len(folders) - len(missing)} of the {len(folders)} class folders; "
                          f"missing: {', '.join(missing[:5])}")
    return [names[folder] for folder in folders]


def _refuse_empty_classes(train_dir: Path, class_names: Sequence[str], labels) -> None:
    """An empty class folder would become a class no training image belongs to (a head row never trained)."""
    counts = np.bincount(labels, minlength=len(class_names))
    empty = [str(train_dir / name) for name, count in zip(class_names, counts) if count == 0]
    if empty:
        raise ConfigError(f"class folder(s) {', '.join(map(repr, empty))} hold no images "
                          f"({', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder, which would otherwise "
                          "become a class without training images")


# --- annotation lists -----------------------------------------------------------------------------------
def read_list_file(path: Path) -> Annotations:
    """Lines of ``relative/path label`` (the path may contain spaces; the label is the last field)."""
    paths, labels = [], []
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.strip().rsplit(maxsplit=1)
        if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
            raise ConfigError(f"{path}:{line_number}: expected 'relative/path label', got {line!r}")
        paths.append(fields[0])
        labels.append(int(fields[1]))
    return paths, labels


def read_json_split(path: Path) -> Annotations:
    """VPT's FGVC format: ``{"relative/path": label, ...}``."""
    try:
        mapping = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(mapping, dict):
        raise ConfigError(f"{path} should hold a {{\"relative/path\": label}} object")
    return list(mapping), [int(label) for label in mapping.values()]


def _read_first(root: Path, candidates: Sequence[str]) -> Annotations | None:
    for filename in candidates:
        path = root / filename
        if path.is_file():
            return read_json_split(path) if path.suffix == ".json" else read_list_file(path)
    return None


def _read_class_names(root: Path, default: Sequence[str]) -> list[str]:
    path = root / CLASS_NAMES_FILE
    if not path.is_file():
        return list(default)
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(names) < len(default):
        raise ConfigError(f"{path} lists {len(names)} class names but the labels need {len(default)}")
    return names[: len(default)]


def _annotated_splits(root: Path, split_files: Mapping[str, Sequence[str]], contiguous_labels: bool) -> SourceSplits:
    """Splits from annotation files; ``contiguous_labels`` maps sorted label values to 0..C-1."""
    annotations = {split: _read_first(root, files) for split, files in split_files.items()}
    if annotations["train"] is None:
        expected = " or ".join(split_files["train"])
        raise ConfigError(f"no training list in {root}: expected {expected} with lines/entries 'relative/path label'")
    label_values = sorted(set().union(*(set(a[1]) for a in annotations.values() if a is not None)))
    if not label_values:
        raise ConfigError(f"the annotation lists under {root} are empty")
    if contiguous_labels:
        label_map = {value: i for i, value in enumerate(label_values)}
        default_names = [str(value) for value in label_values]
    else:
        if label_values[0] < 0:
            raise ConfigError(f"negative label {label_values[0]} in the lists under {root}")
        label_map = {value: value for value in label_values}
        default_names = [str(i) for i in range(label_values[-1] + 1)]
    # VPT keeps FGVC images under root/images; VTAB lists are relative to root itself
    first_path = annotations["train"][0][0] if annotations["train"][0] else ""
    image_dir = root / "images" if (root / "images" / first_path).exists() else root

    def source(entries: Annotations | None) -> FileImageSource | None:
        if entries is None:
            return None
        paths, labels = entries
        return FileImageSource([str(image_dir / p) for p in paths], [label_map[label] for label in labels])

    return SourceSplits(
        train=source(annotations["train"]),
        val=source(annotations.get("val")),
        test=source(annotations.get("test")),
        class_names=_read_class_names(root, default_names),
        trainval=source(annotations.get("trainval")),
    )


VTAB_LIST_FILES = {
    "train": ("train800.txt", "train.txt"),
    "val": ("val200.txt", "val.txt"),
    "trainval": ("train800val200.txt", "trainval.txt"),
    "test": ("test.txt",),
}
FGVC_SPLIT_FILES = {split: (f"{split}.json", f"{split}.txt") for split in ("train", "val", "test")}


def build_list(spec: DataSpec) -> SourceSplits:
    """The extracted VTAB-1k layout: images under root plus ``train800.txt``, ``val200.txt``, ... lists."""
    return _annotated_splits(require_root(spec), VTAB_LIST_FILES, contiguous_labels=False)


def build_fgvc(spec: DataSpec) -> SourceSplits:
    """FGVC (VPT layout): ``root/images/...`` plus ``{train,val,test}.json`` or ``.txt`` annotations."""
    return _annotated_splits(require_root(spec), FGVC_SPLIT_FILES, contiguous_labels=True)


ZHOU_IMAGE_DIRS = ("", "images", "jpg", "101_ObjectCategories", "oxford-iiit-pet/images", "2750", "UCF-101-midframes",
                   "SUN397", "dtd/images", "eurosat/2750")


def build_zhou_split(spec: DataSpec) -> SourceSplits:
    """CoOp's few-shot / base-to-novel splits (Zhou et al.): ``split_zhou_<Dataset>.json`` with ``train`` / ``val`` /
    ``test`` lists of ``[relative/image/path, label, classname]``; class names come from the file.

    ``data.root``: the dataset folder; ``data.split_file``: the JSON (relative to root or absolute; default the one
    ``split_zhou_*.json`` in root); ``data.image_dir``: the folder the paths are relative to (default: found, e.g.
    ``images`` or ``jpg`` under root)."""
    root = require_root(spec, hint=" (the folder holding split_zhou_<Dataset>.json and the images)")
    if spec.split_file == AIRCRAFT_VARIANTS:  # FGVC-Aircraft: CoOp reads the dataset's own lists, no JSON
        split_path, splits = root / AIRCRAFT_VARIANTS, _aircraft_splits(root)
    else:
        split_path = _zhou_split_path(root, spec.split_file)
        try:
            splits = json.loads(split_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ConfigError(f"{split_path} is not valid JSON: {error}") from error
    if not isinstance(splits, dict) or not isinstance(splits.get("train"), list):
        raise ConfigError(f"{split_path} should hold {{'train': [[path, label, classname], ...], 'val': ..., "
                          "'test': ...}} (CoOp's split_zhou_<Dataset>.json)")
    names: dict[int, str] = {}
    entries: dict[str, list] = {}
    for split in ("train", "val", "test"):
        rows = splits.get(split)
        if rows is None:
            continue
        for i, row in enumerate(rows):
            if not (isinstance(row, (list, tuple)) and len(row) == 3 and isinstance(row[1], int)):
                raise ConfigError(f"{split_path}: {split}[{i}] is {row!r}; expected [relative/path, label, classname]")
            names.setdefault(int(row[1]), str(row[2]))
        entries[split] = rows
    labels = sorted(names)
    if labels != list(range(len(labels))):
        raise ConfigError(f"{split_path}: labels should be 0..{len(labels) - 1}, found {labels[:5]}...")
    image_dir = _zhou_image_dir(root, spec.image_dir, entries["train"][0][0] if entries["train"] else "")
    missing = [row[0] for rows in entries.values() for row in rows if not (image_dir / row[0]).is_file()]
    if missing:
        raise ConfigError(f"{len(missing)} images listed in {split_path.name} are missing under {str(image_dir)!r} "
                          f"(first: {missing[0]!r}); download the dataset's images as CoOp's DATASETS.md describes, or "
                          "point data.image_dir=... at the folder the listed paths are relative to")

    def source(rows):
        if rows is None:
            return None
        return FileImageSource([str(image_dir / row[0]) for row in rows], [int(row[1]) for row in rows])

    return SourceSplits(source(entries["train"]), source(entries.get("val")), source(entries.get("test")),
                        [names[label] for label in labels])


AIRCRAFT_VARIANTS = "variants.txt"


def _aircraft_splits(root: Path) -> dict[str, list]:
    """FGVC-Aircraft as CoOp's datasets/fgvc_aircraft.py reads it (data.split_file=variants.txt): class names in
    ``variants.txt`` order, ``images_variant_{train,val,test}.txt`` lines ``<image id> <variant name>``, images in
    ``images/<id>.jpg``; returned in the split JSON's shape."""
    path = root / AIRCRAFT_VARIANTS
    if not path.is_file():
        raise ConfigError(f"{str(path)!r} does not exist; data.root should be FGVC-Aircraft's data/ folder "
                          "(fgvc-aircraft-2013b/data, CoOp's $DATA/fgvc_aircraft)")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    labels = {name: i for i, name in enumerate(names)}
    splits: dict[str, list] = {}
    for split in ("train", "val", "test"):
        lists = root / f"images_variant_{split}.txt"
        if not lists.is_file():
            raise ConfigError(f"{str(lists)!r} does not exist (FGVC-Aircraft's data/ folder has it)")
        rows = []
        for line in lists.read_text().splitlines():
            if not line.strip():
                continue
            image, _, name = line.strip().partition(" ")
            if name not in labels:
                raise ConfigError(f"{lists.name}: variant {name!r} is not in {AIRCRAFT_VARIANTS}")
            rows.append([f"{image}.jpg", labels[name], name])
        splits[split] = rows
    return splits


def _zhou_split_path(root: Path, split_file: str | None) -> Path:
    if split_file:
        path = Path(split_file).expanduser()
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            raise ConfigError(f"data.split_file {str(path)!r} does not exist; pass the split_zhou_<Dataset>.json path")
        return path
    found = sorted(root.glob("split_zhou_*.json"))
    if len(found) != 1:
        raise ConfigError(f"{'no' if not found else len(found)} split_zhou_*.json files in {str(root)!r}; pass "
                          "data.split_file=split_zhou_<Dataset>.json (from the CoOp repository's dataset instructions)")
    return found[0]


def _zhou_image_dir(root: Path, image_dir: str | None, first: str) -> Path:
    if image_dir:
        path = Path(image_dir).expanduser()
        return path if path.is_absolute() else root / path
    for candidate in ZHOU_IMAGE_DIRS:
        if first and (root / candidate / first).is_file():
            return root / candidate
    return root
