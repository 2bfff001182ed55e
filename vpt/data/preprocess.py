"""Image preprocessing from a backbone's data config (timm's ``resolve_data_config`` output).

Every image goes through the same two stages whether or not it is cached:

1. ``to_uint8``: decode and bring to the model input size as a uint8 (3, H, W) tensor (resize to
   ``H / crop_pct`` then centre crop, as timm's eval transform does). The in-memory cache stores this.
2. ``prepare_batch``: uint8 batch -> float, optional batched augmentation, mean/std normalisation.
   This runs on whatever device the batch is on, so cached data never leaves the GPU.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms
from torchvision.transforms import InterpolationMode
from torchvision.transforms.functional import pil_to_tensor

from ..errors import ConfigError
from .spec import plain_mapping

_INTERPOLATIONS = {
    "bicubic": InterpolationMode.BICUBIC,
    "bilinear": InterpolationMode.BILINEAR,
    "nearest": InterpolationMode.NEAREST,
    "lanczos": InterpolationMode.LANCZOS,
    "box": InterpolationMode.BOX,
    "hamming": InterpolationMode.HAMMING,
}
DEFAULT_CROP_PCT = 0.875  # timm's default when a model does not say

# flip_crop augmentation: a mild random-resized-crop (area fraction, aspect ratio) plus horizontal flip
CROP_AREA = (0.5, 1.0)
CROP_ASPECT = (3 / 4, 4 / 3)


@dataclass(frozen=True)
class Preprocess:
    size: tuple[int, int]  # (H, W)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    crop_pct: float = DEFAULT_CROP_PCT

    @classmethod
    def from_data_config(cls, data_config: Mapping[str, Any]) -> "Preprocess":
        cfg = plain_mapping(data_config)
        missing = [k for k in ("input_size", "mean", "std") if k not in cfg]
        if missing:
            raise ConfigError(f"backbone data config lacks {', '.join(missing)}; pass timm's resolve_data_config output")
        channels, height, width = (int(v) for v in cfg["input_size"])
        if channels != 3:
            raise ConfigError(f"only 3-channel inputs are supported, backbone wants input_size={cfg['input_size']}")
        interpolation = cfg.get("interpolation") or "bicubic"
        if interpolation not in _INTERPOLATIONS:
            raise ConfigError(f"interpolation {interpolation!r} not supported; valid: {', '.join(_INTERPOLATIONS)}")
        return cls(
            size=(height, width),
            mean=tuple(float(v) for v in cfg["mean"]),
            std=tuple(float(v) for v in cfg["std"]),
            interpolation=interpolation,
            crop_pct=float(cfg.get("crop_pct") or DEFAULT_CROP_PCT),
        )

    # --- stage 1: decode to a fixed-size uint8 tensor -------------------------------------------------
    @property
    def resize_crop(self) -> transforms.Compose:
        """timm's eval geometry: resize (shorter side for square inputs) to size / crop_pct, centre crop."""
        height, width = self.size
        scaled = (math.floor(height / self.crop_pct), math.floor(width / self.crop_pct))
        resize_to = scaled[0] if scaled[0] == scaled[1] else scaled
        return transforms.Compose([
            transforms.Resize(resize_to, interpolation=_INTERPOLATIONS[self.interpolation]),
            transforms.CenterCrop(self.size),
        ])

    def to_uint8(self, image: Image.Image | torch.Tensor | np.ndarray) -> torch.Tensor:
        """A PIL image, or a float [0, 1] array (C, h, w) for tiny synthetic images, as uint8 (3, H, W).

        Float arrays (e.g. 8x8 digits) are stretched to the full input size with bilinear interpolation:
        cropping would cut into images that have no border to spare.
        """
        if isinstance(image, Image.Image):
            return pil_to_tensor(self.resize_crop(image.convert("RGB")))
        pixels = torch.as_tensor(image, dtype=torch.float32)
        if pixels.ndim != 3 or pixels.shape[0] not in (1, 3):
            raise ValueError(f"expected a (1|3, h, w) float image, got shape {tuple(pixels.shape)}")
        resized = F.interpolate(pixels.expand(3, -1, -1)[None], size=self.size, mode="bilinear", align_corners=False)[0]
        return resized.clamp(0, 1).mul(255).round().to(torch.uint8)

    # --- stage 2: float, augment, normalise ------------------------------------------------------------
    def prepare_batch(self, images: torch.Tensor, augment: str = "none",
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> normalised float32 (B, 3, H, W) on the same device."""
        batch = images.float().div_(255)
        if augment == "flip_crop":
            batch = random_resized_crop_flip(batch, generator)
        stats = _normalisation_stats(self.mean, self.std, batch.device)
        return batch.sub_(stats[0].view(1, 3, 1, 1)).div_(stats[1].view(1, 3, 1, 1))


@functools.lru_cache(maxsize=32)
def _normalisation_stats(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """(2, 3) mean/std on ``device``, made once per device rather than copied to it with every batch."""
    return to_device_async(torch.tensor([mean, std]), device)


def to_device_async(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU tensor on ``device`` without blocking the host: a plain host-to-GPU copy from pageable
    memory synchronises the stream, which would stall the CPU on every batch until the GPU catches up."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)  # the pinned buffer lives until the copy ends
    return tensor.to(device)


def random_resized_crop_flip(images: torch.Tensor, generator: torch.Generator | None = None,
                             area: tuple[float, float] = CROP_AREA,
                             aspect: tuple[float, float] = CROP_ASPECT) -> torch.Tensor:
    """Per-sample random crop (resized back to full size) and horizontal flip, for a whole batch at once.

    Each sample gets an affine sampling grid: crop half-extents (w, h) and centre (cx, cy) in normalised
    [-1, 1] coordinates, with w negated for a flip. Random numbers come from ``generator`` on the CPU so
    the draw is the same on every device.
    """
    count = images.shape[0]
    area_frac = torch.empty(count).uniform_(*area, generator=generator)
    log_aspect = torch.empty(count).uniform_(math.log(aspect[0]), math.log(aspect[1]), generator=generator)
    half_w = (area_frac * log_aspect.exp()).sqrt().clamp(max=1.0)
    half_h = (area_frac / log_aspect.exp()).sqrt().clamp(max=1.0)
    centre_x = (torch.rand(count, generator=generator) * 2 - 1) * (1 - half_w)
    centre_y = (torch.rand(count, generator=generator) * 2 - 1) * (1 - half_h)
    flip = torch.where(torch.rand(count, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(count, 2, 3)
    theta[:, 0, 0] = half_w * flip
    theta[:, 0, 2] = centre_x
    theta[:, 1, 1] = half_h
    theta[:, 1, 2] = centre_y
    theta = to_device_async(theta, images.device).to(images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
