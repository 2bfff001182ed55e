"""Pixel prompts (Bahng et al., 2022, "Exploring Visual Prompts for Adapting Large-Scale Models").

Each adds a learnable perturbation to the normalised image, so it works on any frozen encoder.
"""
from __future__ import annotations

import torch
from torch import nn


class PixelPrompt(nn.Module):
    def __init__(self, image_size: tuple[int, int], size: int) -> None:
        super().__init__()
        self.image_size = tuple(image_size)
        self.size = size

    def prompt_image(self) -> torch.Tensor:
        """(1, 3, H, W) additive image (eval-mode form; used by the prompt bank)."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        prompt = self.prompt_image()
        if prompt.shape[-2:] != images.shape[-2:]:  # other input sizes (detection): the prompt scales with the image
            prompt = nn.functional.interpolate(prompt, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return images + prompt.to(images.dtype)


class PadPrompt(PixelPrompt):
    """A learnable frame of width ``size`` around the image (Bahng et al.'s default, p=30 at 224)."""

    def __init__(self, image_size: tuple[int, int], size: int) -> None:
        super().__init__(image_size, size)
        h, w = self.image_size
        if 2 * size >= min(h, w):
            from ..errors import ConfigError

            raise ConfigError(f"prompt.size={size} leaves no image inside a {h}x{w} frame; use prompt.size < {min(h, w) // 2}")
        self.pad_up = nn.Parameter(torch.randn(1, 3, size, w))
        self.pad_down = nn.Parameter(torch.randn(1, 3, size, w))
        self.pad_left = nn.Parameter(torch.randn(1, 3, h - 2 * size, size))
        self.pad_right = nn.Parameter(torch.randn(1, 3, h - 2 * size, size))

    def prompt_image(self) -> torch.Tensor:
        h, w = self.image_size
        base = self.pad_up.new_zeros(1, 3, h - 2 * self.size, w - 2 * self.size)
        middle = torch.cat([self.pad_left, base, self.pad_right], dim=3)
        return torch.cat([self.pad_up, middle, self.pad_down], dim=2)


class FixedPatchPrompt(PixelPrompt):
    """A learnable ``size`` x ``size`` patch at the top-left corner."""

    def __init__(self, image_size: tuple[int, int], size: int) -> None:
        super().__init__(image_size, size)
        if size > min(self.image_size):
            from ..errors import ConfigError

            raise ConfigError(f"prompt.size={size} is larger than the {self.image_size} image")
        self.patch = nn.Parameter(torch.randn(1, 3, size, size))

    def _placed(self, top: int, left: int) -> torch.Tensor:
        h, w = self.image_size
        return nn.functional.pad(self.patch, (left, w - left - self.size, top, h - top - self.size))

    def prompt_image(self) -> torch.Tensor:
        return self._placed(0, 0)


class RandomPatchPrompt(FixedPatchPrompt):
    """A learnable patch at a random place per training batch (as Bahng et al.).

    In eval mode it sits at the image centre so that predictions are deterministic and a sample's output
    does not depend on its batch.
    """

    def prompt_image(self) -> torch.Tensor:
        h, w = self.image_size
        if self.training:
            top = int(torch.randint(0, h - self.size + 1, ()).item())
            left = int(torch.randint(0, w - self.size + 1, ()).item())
            return self._placed(top, left)
        return self._placed((h - self.size) // 2, (w - self.size) // 2)


PIXEL_PROMPTS = {"pad": PadPrompt, "patch": FixedPatchPrompt, "random_patch": RandomPatchPrompt}
