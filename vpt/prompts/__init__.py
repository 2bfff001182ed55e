from .pixel import PIXEL_PROMPTS, FixedPatchPrompt, PadPrompt, PixelPrompt, RandomPatchPrompt
from .token import TokenPrompts, insert_or_replace

__all__ = ["PIXEL_PROMPTS", "FixedPatchPrompt", "PadPrompt", "PixelPrompt", "RandomPatchPrompt", "TokenPrompts", "insert_or_replace"]
