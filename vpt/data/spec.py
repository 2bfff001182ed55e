"""The ``data`` config group, parsed and validated once so the rest of the package can trust it."""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import ConfigError

log = logging.getLogger(__name__)

AUGMENTATIONS = ("none", "flip_crop", "timm")
SUBSAMPLE_CLASSES = ("all", "base", "new")  # base-to-novel (CoCoOp's protocol): labels sorted, first ceil(n/2) base
SPLIT_NAMES = ("train", "val", "test")


def plain_mapping(cfg: Any) -> dict[str, Any]:
    """A plain dict from a dict-like config (an OmegaConf ``DictConfig`` is resolved first)."""
    try:
        from omegaconf import OmegaConf
    except ImportError:  # omegaconf is a dependency, but the data layer does not need it otherwise
        OmegaConf = None
    if OmegaConf is not None and OmegaConf.is_config(cfg):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"expected a mapping for the data config, got {type(cfg).__name__}")
    return dict(cfg)


@dataclass(frozen=True)
class DataSpec:
    """What to load and which samples to keep. Field docs are in :func:`vpt.data.build_data`."""

    name: str
    root: str | None = None
    download: bool = False
    classes: tuple[int | str, ...] | None = None
    subsample_classes: str = "all"
    num_shots: int | None = None
    train_size: int | None = None
    val_size: int | None = None
    val_shots: int | None = None  # k images per class of the val split (all of a smaller class), drawn per seed
                                  # (CoOp: min(num_shots, 4))
    train_on_trainval: bool = False
    val_fraction: float = 0.0
    cache: bool | None = None  # None: cache when the decoded splits fit in memory comfortably
    augment: str = "none"
    timm_aug: dict[str, Any] | None = None  # augment=timm: arguments of timm.data.create_transform
    max_per_class_test: int | None = None
    skip_bad_images: bool = False  # True: drop unreadable image files (with a warning and a count) instead of stopping
    # bring your own dataset (vpt.data.custom): `_target_` in the config
    target: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    splits: dict[str, Any] | None = None
    class_names: tuple[str, ...] | None = None
    # name=zhou_split: CoOp's split_zhou_<Dataset>.json ([path, label, classname] lists) and its images' folder
    split_file: str | None = None
    image_dir: str | None = None
    # name=imagefolder: "<folder> <class name>" lines (CoOp's ImageNet classnames.txt) naming the class folders
    class_names_file: str | None = None
    # name=imagefolder: root's <class>/<image> folders are a test split only, to score prompt files on with vpt-eval
    # (ImageNet-V2 / -Sketch / -A / -R in domain generalisation); there is nothing to train on
    eval_only: bool = False
    image_key: str = "image"
    label_key: str = "label"

    @classmethod
    def from_mapping(cls, cfg: Any) -> "DataSpec":
        values = plain_mapping(cfg)
        if "_target_" in values:
            values["target"] = values.pop("_target_")
        if not values.get("name"):
            raise ConfigError("data.name is required, e.g. data.name=digits")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:  # other parts of the config may share this group, so warn instead of failing
            log.warning("data config keys not used by the data layer: %s", ", ".join(unknown))
        values = {k: v for k, v in values.items() if k in known}
        if values.get("classes") is not None:
            values["classes"] = tuple(values["classes"])
        if values.get("root") is not None:
            values["root"] = str(values["root"])
        if values.get("class_names") is not None:
            values["class_names"] = tuple(str(name) for name in values["class_names"])
        values["kwargs"] = dict(values.get("kwargs") or {})
        return cls(**values)

    def __post_init__(self) -> None:
        for key in ("num_shots", "train_size", "val_size", "val_shots", "max_per_class_test"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"data.{key} must be a positive integer or null, got {value!r}")
        if not 0.0 <= float(self.val_fraction) < 1.0:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {self.val_fraction!r}")
        if self.augment not in AUGMENTATIONS:
            raise ConfigError(f"data.augment must be one of {', '.join(AUGMENTATIONS)}, got {self.augment!r}")
        self._check_custom()
        if self.eval_only and self.name != "imagefolder":  # the other formats have their own test splits
            raise ConfigError(f"data.eval_only=true is for data=imagefolder (a folder of class folders, only scored); "
                              f"data={self.name} has its own splits: drop data.eval_only")
        if self.val_shots is not None and self.val_size is not None:
            raise ConfigError("data.val_shots and data.val_size both pick the val samples; set only one")
        if self.num_shots is not None and self.train_size is not None:
            raise ConfigError("data.num_shots and data.train_size both pick the training samples; set only one")
        if not isinstance(self.skip_bad_images, bool):
            raise ConfigError(f"data.skip_bad_images must be true or false, got {self.skip_bad_images!r}")
        if self.subsample_classes not in SUBSAMPLE_CLASSES:
            raise ConfigError(f"data.subsample_classes must be one of {', '.join(SUBSAMPLE_CLASSES)} (base-to-novel: "
                              f"the first ceil(n/2) classes are base, the rest new), got {self.subsample_classes!r}")
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"data.classes has duplicates: {list(self.classes)}")

    @property
    def is_custom(self) -> bool:
        """A dataset built by the config's own ``_target_`` (top level or per split)."""
        return self.target is not None or self.splits is not None

    def _check_custom(self) -> None:
        if self.target == "???":  # configs/data/custom.yaml leaves it to the user
            raise ConfigError("data._target_ is not set: pass your Dataset class or factory, e.g. "
                              "data._target_=my_project.data.MyDataset (see configs/data/custom.yaml)")
        if self.splits is None:
            return
        if not isinstance(self.splits, dict):
            raise ConfigError(f"data.splits must map split names ({', '.join(SPLIT_NAMES)}) to arguments, "
                              f"got {self.splits!r}")
        unknown = sorted(set(self.splits) - set(SPLIT_NAMES))
        if unknown:
            raise ConfigError(f"data.splits has {', '.join(unknown)}; valid split names: {', '.join(SPLIT_NAMES)}")
        if self.splits.get("train") is None:
            raise ConfigError("data.splits needs a train entry, e.g. data.splits={train: {split: train}, "
                              "test: {split: test}}")
