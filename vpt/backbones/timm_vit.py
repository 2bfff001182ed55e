"""timm Vision Transformers (ViT, DeiT, DINOv2-style with register tokens) and any other timm model."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import BUILTIN_PRIORITY, BackboneAdapter, insert_or_replace, register_adapter, remove_prompts
from .timm_prompted_block import is_plain_timm_block, prompted_block


def _timm_data_config(model: nn.Module) -> dict[str, Any]:
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    return {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in cfg.items()}


@register_adapter(priority=BUILTIN_PRIORITY)
class TimmViTAdapter(BackboneAdapter):
    """Steps of ``timm.models.VisionTransformer.forward_features`` + ``forward_head(pre_logits=True)``."""

    @classmethod
    def accepts(cls, model: nn.Module) -> bool:
        from timm.models.vision_transformer import VisionTransformer

        return isinstance(model, VisionTransformer)

    def __init__(self, model: nn.Module, name: str) -> None:
        super().__init__(model, name)
        self.embed_dim = model.embed_dim
        self.feature_dim = model.num_features if model.attn_pool is None else model.head_hidden_size
        self.num_prefix_tokens = model.num_prefix_tokens
        self.patch_size = tuple(model.patch_embed.patch_size)
        self.num_heads = model.blocks[0].attn.num_heads if len(model.blocks) else 1

    @property
    def blocks(self) -> nn.Sequential:
        return self.model.blocks

    @property
    def takes_any_input_size(self) -> bool:
        # built with dynamic_img_size=True, timm resizes the position embeddings to each input
        return bool(getattr(self.model, "dynamic_img_size", False))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m.patch_embed(images)
        x = m._pos_embed(x)
        x = m.patch_drop(x)
        return m.norm_pre(x)

    def run_layer(self, index, tokens, prompts=None, prompt_length=0, rows="all", attn_bias=None):
        """The fast path where it gives the same rows: prompts whose outputs are discarded get keys and values
        only, computed once for the batch; a ``prefix`` layer computes the class/register rows only."""
        block = self.blocks[index]
        if not (self.fast_path and rows != "all" and attn_bias is None and is_plain_timm_block(block)):
            return super().run_layer(index, tokens, prompts, prompt_length, rows, attn_bias)
        queries = self.num_prefix_tokens if rows == "prefix" else None
        if prompts is not None and prompts.dim() == 2:  # shared by the batch: keys/values only
            if prompt_length:
                tokens = remove_prompts(tokens, self.num_prefix_tokens, prompt_length)
            return prompted_block(block, tokens, prompts, queries), 0
        if queries is None:
            return super().run_layer(index, tokens, prompts, prompt_length, rows, attn_bias)
        if prompts is not None:  # per-sample prompts (prompt dropout): ordinary rows, only the prefix is computed
            tokens = insert_or_replace(tokens, prompts, self.num_prefix_tokens, prompt_length)
        return prompted_block(block, tokens, None, queries), 0

    def encoder_state_dict(self):
        # the classifier (``head``) is not part of the prompted forward: vpt owns the head
        return {k: v for k, v in self.model.state_dict().items() if not k.startswith("head.")}

    def tail_modules(self):
        m = self.model
        return [module for module in (m.norm, m.attn_pool, m.fc_norm) if module is not None]

    @property
    def pools_first_token(self) -> bool:
        m = self.model
        return m.attn_pool is None and m.global_pool == "token"

    def finish(self, tokens: torch.Tensor, need_tokens: bool = False):
        tokens = self.model.norm(tokens)
        return self.model.forward_head(tokens, pre_logits=True), tokens

    def data_config(self) -> dict[str, Any]:
        cfg = _timm_data_config(self.model)
        img_size = getattr(self.model.patch_embed, "img_size", None)
        if img_size is not None:  # the pretrained cfg keeps 224 when the model was built at another size
            cfg["input_size"] = (cfg["input_size"][0], *img_size)
        return cfg


@register_adapter(priority=BUILTIN_PRIORITY)
class TimmGenericAdapter(BackboneAdapter):
    """Any other timm model (ResNet, ConvNeXt, ...): pixel prompts and baselines, no token prompts."""

    supports_token_prompts = False

    @classmethod
    def accepts(cls, model: nn.Module) -> bool:
        return hasattr(model, "forward_features") and hasattr(model, "forward_head") and hasattr(model, "pretrained_cfg")

    def __init__(self, model: nn.Module, name: str) -> None:
        super().__init__(model, name)
        self.feature_dim = getattr(model, "head_hidden_size", None) or model.num_features
        self.embed_dim = self.feature_dim

    @property
    def blocks(self) -> list:
        return []

    @property
    def takes_any_input_size(self) -> bool:
        return True  # convolutions and a global pool: no table of the built size

    #: the input size the backbone was configured for (``backbone.image_size``); None: the pretrained config's
    image_size: int | None = None

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """The globally pooled pre-logits feature (e.g. EfficientNet's 1280-d average-pooled head output)."""
        return self.model.forward_head(self.model.forward_features(images), pre_logits=True)

    def data_config(self) -> dict[str, Any]:
        cfg = _timm_data_config(self.model)
        if self.image_size:
            cfg["input_size"] = (cfg["input_size"][0], self.image_size, self.image_size)
        return cfg
