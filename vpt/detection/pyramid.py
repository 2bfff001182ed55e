"""ViTDet's simple feature pyramid: multi-scale maps from the single stride-p map of a plain ViT.

Li et al. 2022, "Exploring Plain Vision Transformer Backbones for Object Detection", section 3: the last
ViT feature map (stride p) is upsampled by deconvolutions (4x, 2x), kept (1x) or max-pooled (0.5x); each
level then gets a 1x1 and a 3x3 convolution with LayerNorm. An extra top level (stride 2x the coarsest)
comes from a stride-2 subsampling, as torchvision's ``LastLevelMaxPool`` does for its FPN.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F
from timm.layers import LayerNorm2d

from ..errors import ConfigError

SUPPORTED_SCALES = (4.0, 2.0, 1.0, 0.5)
TOP_LEVEL_NAME = "pool"  # the name torchvision's FPN gives its LastLevelMaxPool output


def _resample(scale: float, dim: int) -> tuple[nn.Module, int]:
    """The scale-changing stage for one level and the channel count it leaves."""
    if scale == 4.0:
        return nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2),
            LayerNorm2d(dim // 2),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 2, dim // 4, kernel_size=2, stride=2),
        ), dim // 4
    if scale == 2.0:
        return nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2), dim // 2
    if scale == 1.0:
        return nn.Identity(), dim
    if scale == 0.5:
        return nn.MaxPool2d(kernel_size=2, stride=2), dim
    raise ConfigError(f"pyramid scale {scale} is not one of ViTDet's {SUPPORTED_SCALES}; pick from those")


def _output_convs(in_channels: int, out_channels: int) -> nn.Sequential:
    # no conv bias: the LayerNorm that follows has its own shift
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
        LayerNorm2d(out_channels),
        nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
        LayerNorm2d(out_channels),
    )


class SimpleFeaturePyramid(nn.Module):
    """(B, in_dim, H/p, W/p) -> OrderedDict of (B, out_channels, H/s, W/s) maps, finest first.

    Levels are named ``"0"``, ``"1"``, ... in ``scales`` order (finest first), plus ``"pool"`` for the top
    level, as torchvision's FPN names them. ``strides(patch)`` gives each level's stride in input pixels.
    """

    def __init__(self, in_dim: int, out_channels: int = 256, scales: Sequence[float] = SUPPORTED_SCALES,
                 top_block: bool = True) -> None:
        super().__init__()
        scales = tuple(float(s) for s in scales)
        if not scales or list(scales) != sorted(scales, reverse=True) or len(set(scales)) != len(scales):
            raise ConfigError(f"pyramid scales {scales} must be distinct and finest first, e.g. {SUPPORTED_SCALES}")
        upsampling = int(max(scales))  # each 2x deconvolution halves the channels
        if upsampling > 1 and in_dim % upsampling:
            raise ConfigError(f"embedding width {in_dim} must be divisible by {upsampling} for the "
                              f"{upsampling}x pyramid level; drop that scale from the pyramid scales")
        self.scales = scales
        self.top_block = top_block
        self.out_channels = out_channels
        self.levels = nn.ModuleList()
        for scale in scales:
            resample, channels = _resample(scale, in_dim)
            self.levels.append(nn.Sequential(resample, _output_convs(channels, out_channels)))

    @property
    def level_names(self) -> list[str]:
        return [str(i) for i in range(len(self.scales))] + ([TOP_LEVEL_NAME] if self.top_block else [])

    def strides(self, patch: int | Sequence[int]) -> list[float]:
        """Stride of each level (``level_names`` order) for a ViT with this patch size."""
        patch = patch if isinstance(patch, int) else patch[0]
        strides = [patch / scale for scale in self.scales]
        return strides + ([strides[-1] * 2] if self.top_block else [])

    def forward(self, features: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        maps = [level(features) for level in self.levels]
        if self.top_block:
            maps.append(F.max_pool2d(maps[-1], kernel_size=1, stride=2, padding=0))
        return OrderedDict(zip(self.level_names, maps))
