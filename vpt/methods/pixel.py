"""Pixel prompts (Bahng et al., 2022): a learnable frame or patch added to the image; any encoder."""
from __future__ import annotations

from dataclasses import dataclass

from .pixel_prompts import FixedPatchPrompt, PadPrompt, RandomPatchPrompt
from .base import Method, register_method, require_int


@dataclass
class PixelOptions:
    """size: pixel prompt size: pad width p for ``pad``, square side for ``patch`` / ``random_patch``."""

    size: int = 30


class PixelPromptMethod(Method):
    kind = "pixel"
    config_class = PixelOptions
    prompt_class: type = PadPrompt

    def validate(self, cfg) -> None:
        require_int(cfg.size, "size")

    def build(self, cfg, backbone, input_size):
        return {"pixel_prompt": self.prompt_class(input_size, cfg.size)} if cfg.size > 0 else {}

    def needs_fixed_input_size(self, cfg) -> bool:
        return cfg.size > 0  # the prompt is an image of the built size


class PadMethod(PixelPromptMethod):
    name, prompt_class = "pad", PadPrompt


class PatchMethod(PixelPromptMethod):
    name, prompt_class = "patch", FixedPatchPrompt


class RandomPatchMethod(PixelPromptMethod):
    name, prompt_class = "random_patch", RandomPatchPrompt


for _method in (PadMethod(), PatchMethod(), RandomPatchMethod()):
    register_method(_method)
