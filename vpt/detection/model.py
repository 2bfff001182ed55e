"""PromptedDetector: a frozen prompted ViT, ViTDet's simple feature pyramid and a torchvision detector.

    images -> [torchvision GeneralizedRCNNTransform: normalise, resize, pad] -> encoder.forward_dense
           -> SimpleFeaturePyramid -> Faster R-CNN / RetinaNet / FCOS (torchvision's heads, anchors, losses, NMS)

Labels are contiguous 1..K (0 is torchvision's background); the datasets map them to their category ids.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign

from ..errors import ConfigError
from ..model import PromptedModel
from ..registry import Registry
from ..tuned import TrainableState
from .pyramid import SUPPORTED_SCALES, TOP_LEVEL_NAME, SimpleFeaturePyramid

#: torchvision detector heads by name (one Registry, as methods and tasks: unknown names get a did-you-mean)
DETECTORS: Registry[str] = Registry("detector")
for _kind in ("faster_rcnn", "retinanet", "fcos"):
    DETECTORS.register(_kind, _kind)
RETINANET_OCTAVES = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))  # three anchor sizes per octave, as RetinaNet


class _EncoderPyramid(nn.Module):
    """The ``backbone`` torchvision's detectors call: padded image batch -> named pyramid maps.

    It holds the encoder and pyramid without registering them: PromptedDetector registers them, so their
    state-dict keys are ``encoder.*`` and ``pyramid.*`` and not duplicated under ``detector.backbone``.
    """

    def __init__(self, encoder: PromptedModel, pyramid: SimpleFeaturePyramid) -> None:
        super().__init__()
        self._parts = (encoder, pyramid)
        self.out_channels = pyramid.out_channels

    def forward(self, images: torch.Tensor):
        encoder, pyramid = self._parts
        return pyramid(encoder.forward_dense(images))


def _integer_strides(strides: Sequence[float], patch: int) -> list[int]:
    if any(s != int(s) or s < 1 for s in strides):
        raise ConfigError(f"patch size {patch} gives pyramid strides {list(strides)}; torchvision's anchors need "
                          "whole-pixel strides: use a backbone with patch 8, 16 or 32, or other pyramid scales")
    return [int(s) for s in strides]


def _anchor_generator(kind: str, strides: Sequence[int]) -> AnchorGenerator:
    """Anchor sizes grow with the stride, in the proportions of torchvision's own FPN detectors."""
    if kind == "faster_rcnn":  # 32..512 px for strides 4..64
        return AnchorGenerator(tuple((8 * s,) for s in strides), ((0.5, 1.0, 2.0),) * len(strides))
    if kind == "retinanet":  # 32..512 px (x3 octaves) for strides 8..128
        sizes = tuple(tuple(4 * s * octave for octave in RETINANET_OCTAVES) for s in strides)
        return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(strides))
    return AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(strides))  # FCOS: one point per cell


def _roi_pooler(names: Sequence[str], strides: Sequence[int]) -> MultiScaleRoIAlign:
    # RoIAlign infers each level's scale as a power of two from the map size, so those strides must be
    pooled = [(n, s) for n, s in zip(names, strides) if n != TOP_LEVEL_NAME]  # ViTDet pools P2-P5, not P6
    if any(s & (s - 1) for _, s in pooled):
        raise ConfigError(f"Faster R-CNN's RoIAlign needs power-of-two strides, the pyramid has {list(strides)}; "
                          "use a backbone with patch 8, 16 or 32 or detector=fcos / retinanet")
    return MultiScaleRoIAlign([n for n, _ in pooled], output_size=7, sampling_ratio=2)


def _build_detector(kind: str, backbone: _EncoderPyramid, num_labels: int, names: Sequence[str],
                    strides: Sequence[int], options: dict[str, Any]) -> nn.Module:
    """A torchvision detector; ``options`` holds the transform settings and any constructor keyword."""
    options = dict(options)
    if kind == "faster_rcnn":
        options.setdefault("rpn_anchor_generator", _anchor_generator(kind, strides))
        options.setdefault("box_roi_pool", _roi_pooler(names, strides))
        representation = options.pop("representation_size", None)  # a smaller box head for small models
        if representation is not None and "box_head" not in options:
            resolution = options["box_roi_pool"].output_size[0]
            options["box_head"] = TwoMLPHead(backbone.out_channels * resolution ** 2, representation)
            options["box_predictor"] = FastRCNNPredictor(representation, num_labels)
            return FasterRCNN(backbone, num_classes=None, **options)
        return FasterRCNN(backbone, num_classes=num_labels, **options)
    options.setdefault("anchor_generator", _anchor_generator(kind, strides))
    return (RetinaNet if kind == "retinanet" else FCOS)(backbone, num_classes=num_labels, **options)


def _resize_range(encoder: PromptedModel, min_size: int | Sequence[int] | None,
                  max_size: int | None) -> tuple[int | tuple[int, ...], int]:
    """Defaults: shorter side to the encoder's input size, longer side capped as torchvision's 800 / 1333."""
    if min_size is None:
        min_size = min(encoder.input_size[1:])
    if not isinstance(min_size, int):
        min_size = tuple(int(s) for s in min_size)
    largest = min_size if isinstance(min_size, int) else max(min_size)
    return min_size, max_size or round(largest * 1333 / 800)


class PromptedDetector(TrainableState):
    """A prompted ViT encoder + ViTDet pyramid + torchvision detector.

    Args:
        encoder: a :class:`PromptedModel` on a ViT backbone, built with ``num_classes=0`` (no head).
        num_classes: number of object classes K; the model predicts labels 1..K.
        detector: ``"faster_rcnn"``, ``"retinanet"`` or ``"fcos"``.
        min_size, max_size: torchvision's resize (shorter side to ``min_size``, longer side at most ``max_size``);
            ``min_size`` may be a tuple (a random choice per training batch). Default: the encoder's input size.
        pyramid_channels, pyramid_scales, pyramid_top_block: the :class:`SimpleFeaturePyramid`.
            ``pyramid_top_block=None`` adds the top level unless a fixed input size is not a multiple of its stride.
        **detector_kwargs: passed to the torchvision detector (e.g. ``box_detections_per_img``, ``score_thresh``,
            ``rpn_batch_size_per_image``); ``representation_size`` sets Faster R-CNN's box-head width (default 1024).

    Encoders that take any size (timm with ``dynamic_img_size=True``) see images resized by ``min_size`` /
    ``max_size`` and padded to a multiple of the coarsest stride (itself a multiple of the patch size). Others
    (open_clip towers, pixel prompts) get every image resized to their input size (torchvision's ``fixed_size``).
    """

    def __init__(self, encoder: PromptedModel, num_classes: int, detector: str = "faster_rcnn",
                 min_size: int | Sequence[int] | None = None, max_size: int | None = None,
                 pyramid_channels: int = 256, pyramid_scales: Sequence[float] = SUPPORTED_SCALES,
                 pyramid_top_block: bool | None = None, **detector_kwargs: Any) -> None:
        super().__init__()
        if detector not in DETECTORS:
            raise DETECTORS.unknown(detector)
        if num_classes < 1:
            raise ConfigError(f"num_classes={num_classes}: a detector needs at least one object class")
        self._check_encoder(encoder)
        if detector == "fcos" and pyramid_channels % 32 and "head" not in detector_kwargs:
            raise ConfigError(f"pyramid_channels={pyramid_channels}: FCOS's head normalises 32 groups of channels; "
                              "use a multiple of 32")
        patch = encoder.backbone.patch_size[0]
        fixed_size = None if encoder.takes_any_input_size else tuple(encoder.input_size[1:])
        if pyramid_top_block is None:
            coarsest = patch / min(pyramid_scales) * 2
            pyramid_top_block = fixed_size is None or all(side % coarsest == 0 for side in fixed_size)
        self.encoder = encoder
        self.pyramid = SimpleFeaturePyramid(encoder.backbone.embed_dim, pyramid_channels, pyramid_scales,
                                            pyramid_top_block)
        strides = _integer_strides(self.pyramid.strides(patch), patch)
        divisor = math.lcm(patch, *strides)
        if fixed_size is not None and any(side % divisor for side in fixed_size):
            raise ConfigError(f"input size {fixed_size} of {encoder.backbone.name} is not a multiple of the coarsest "
                              f"pyramid stride {max(strides)}; drop the coarsest level (pyramid_top_block=false, or "
                              "pyramid_scales without 0.5) or use an input size that is")
        min_size, max_size = _resize_range(encoder, min_size, max_size)
        data = encoder.data_config
        transform = dict(min_size=min_size, max_size=max_size, image_mean=list(data["mean"]),
                         image_std=list(data["std"]), size_divisible=divisor,
                         fixed_size=None if fixed_size is None else (fixed_size[1], fixed_size[0]))  # (W, H)
        # Faster R-CNN's softmax has a background column 0; RetinaNet's and FCOS's sigmoid heads score every
        # column as a class, so they get K columns and labels shifted to 0..K-1 (a column 0 for "background"
        # would be a class that never occurs, yet can still be predicted)
        self.label_offset = 0 if detector == "faster_rcnn" else 1
        self.detector = _build_detector(detector, _EncoderPyramid(encoder, self.pyramid),
                                        num_classes + 1 - self.label_offset,
                                        self.pyramid.level_names, strides, {**transform, **detector_kwargs})
        self.config = {
            "detector": detector, "num_classes": num_classes, "min_size": min_size, "max_size": max_size,
            "pyramid_channels": pyramid_channels, "pyramid_scales": list(self.pyramid.scales),
            "pyramid_top_block": pyramid_top_block, "strides": strides, "size_divisible": divisor,
            "fixed_size": list(fixed_size) if fixed_size else None,
        }

    @staticmethod
    def _check_encoder(encoder: PromptedModel) -> None:
        if not encoder.backbone.supports_token_prompts:
            raise ConfigError(f"{encoder.backbone.name} has no patch-token grid; detection needs a ViT backbone")
        if not isinstance(encoder.head, nn.Identity):
            raise ConfigError("the detector reads the encoder's patch grid, not a classifier: build the "
                              "PromptedModel with num_classes=0")
        ph, pw = encoder.backbone.patch_size
        if ph != pw:
            raise ConfigError(f"patch size {ph}x{pw}: the feature pyramid needs square patches")

    # ---- forward --------------------------------------------------------------------------
    def forward(self, images: Sequence[torch.Tensor], targets: Sequence[dict[str, torch.Tensor]] | None = None):
        """Train mode: dict of losses. Eval mode: per image {boxes (XYXY, input-image pixels), labels 1..K, scores}."""
        if targets is not None and self.label_offset:
            targets = [{**target, "labels": target["labels"] - self.label_offset} for target in targets]
        outputs = self.detector(list(images), None if targets is None else list(targets))
        if isinstance(outputs, list) and self.label_offset:
            outputs = [{**output, "labels": output["labels"] + self.label_offset} for output in outputs]
        return outputs

    def mismatch_fix(self) -> str:
        return ("build the detector with the settings it was saved with (backbone, prompt, detector, num_classes, "
                "pyramid)")
