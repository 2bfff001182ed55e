from .pixel import PIXEL_PROMPTS, FixedPatchPrompt, PadPrompt, PixelPrompt, RandomPatchPrompt
from ..backbones.base import insert_or_replace
from .token import TokenPrompts

__all__ = ["PIXEL_PROMPTS", "FixedPatchPrompt", "PadPrompt", "PixelPrompt", "RandomPatchPrompt", "TokenPrompts", "insert_or_replace"]
