"""Image tower of open_clip ViT models (``model.visual``); the text tower serves the zero-shot head."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import BUILTIN_PRIORITY, BackboneAdapter, register_adapter


@register_adapter(priority=BUILTIN_PRIORITY)
class OpenCLIPViTAdapter(BackboneAdapter):
    """Steps of ``open_clip.transformer.VisionTransformer.forward``: ``_embeds`` → resblocks → ``_pool`` → proj."""

    @classmethod
    def accepts(cls, model: nn.Module) -> bool:
        try:
            from open_clip.transformer import VisionTransformer
        except ImportError:  # open_clip is optional for timm-only users
            return False
        # the image tower itself, or a whole CLIP model (then its text tower serves zero-shot heads)
        return isinstance(model, VisionTransformer) or isinstance(getattr(model, "visual", None), VisionTransformer)

    def __init__(self, model: nn.Module, name: str) -> None:
        clip_model = None
        if hasattr(model, "visual") and hasattr(model, "encode_text"):
            clip_model, model = model, model.visual
            name = name if name != type(clip_model).__name__ else "open_clip:" + type(clip_model).__name__
        super().__init__(model, name)
        if not getattr(model.transformer, "batch_first", True):
            raise TypeError("vpt needs an open_clip vision tower built with batch_first=True (the default)")
        self.embed_dim = model.transformer.width
        self.feature_dim = model.proj.shape[1] if model.proj is not None else self.embed_dim
        self.num_prefix_tokens = 1
        self.patch_size = tuple(model.patch_size)
        self.num_heads = model.transformer.resblocks[0].attn.num_heads
        self._clip = [clip_model]  # a list keeps the text tower out of this module's parameters and state dict
        if clip_model is not None:
            import open_clip

            self.tokenizer = open_clip.tokenize  # OpenAI CLIP BPE; create_backbone sets the model's own

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.transformer.resblocks

    @property
    def takes_any_input_size(self) -> bool:
        return False  # the tower adds its position table of the built size as it is

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.model._embeds(images)

    def attention_bias(self, key_padding: torch.Tensor) -> torch.Tensor:
        # nn.MultiheadAttention takes a float mask of shape (B * heads, L, S)
        b, n = key_padding.shape
        return super().attention_bias(key_padding).expand(b, self.num_heads, n, n).reshape(b * self.num_heads, n, n)

    def tail_modules(self):
        return [self.model.ln_post]

    def finish(self, tokens: torch.Tensor, need_tokens: bool = False):
        visual = self.model
        pooled, _ = visual._pool(tokens)
        if visual.proj is not None:
            pooled = pooled @ visual.proj
        if need_tokens:
            tokens = visual.ln_post(tokens)
        return pooled, tokens

    def data_config(self) -> dict[str, Any]:
        visual = self.model
        size = visual.image_size if isinstance(visual.image_size, (tuple, list)) else (visual.image_size,) * 2
        mean = getattr(visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073)
        std = getattr(visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711)
        return {"input_size": (3, *size), "mean": tuple(mean), "std": tuple(std),
                "interpolation": "bicubic", "crop_pct": 1.0}
