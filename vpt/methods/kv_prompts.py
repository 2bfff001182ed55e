"""E2VPT-style key-value prompts (Han et al., ICCV 2023): learnable key and value tokens in every attention layer.

The tokens join the keys and values after the qkv projection, per head (E2VPT's ``deep_QKV_embeddings``), so
every query attends to them but they produce no output rows. E2VPT's visual prompts and pruning are not part of
this method (combine with ``deep`` for the former).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import reduce
from operator import mul

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import Method, register_method, require_fraction, require_int


@dataclass
class KVPromptOptions:
    """length: key/value tokens per layer; share_kv: one tensor serves as both keys and values (E2VPT's
    ``SHARE_PARAM_KV``), else separate ones; dropout: on the tokens (train mode only)."""

    length: int = 10
    share_kv: bool = True
    dropout: float = 0.0


class KVPromptAttention(nn.Module):
    """A timm ``Attention`` with ``length`` learnable key/value tokens per head prepended to its keys and values."""

    def __init__(self, attn: nn.Module, length: int, share_kv: bool, dropout: float, patch_size) -> None:
        super().__init__()
        self.attn = attn
        shape = (attn.num_heads, length, attn.head_dim)
        val = math.sqrt(6.0 / float(3 * reduce(mul, patch_size, 1) + 16))  # E2VPT's uniform init (ORIGIN_INIT 0)
        self.key = nn.Parameter(torch.empty(shape).uniform_(-val, val))
        self.value = None if share_kv else nn.Parameter(torch.empty(shape).uniform_(-val, val))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        a = self.attn
        B, N, _ = x.shape
        q, k, v = a.qkv(x).reshape(B, N, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = a.q_norm(q), a.k_norm(k)
        key = self.dropout(self.key.to(k.dtype)).expand(B, -1, -1, -1)
        value = key if self.value is None else self.dropout(self.value.to(v.dtype)).expand(B, -1, -1, -1)
        k, v = torch.cat([key, k], dim=2), torch.cat([value, v], dim=2)
        if attn_mask is not None:  # the bias covers the token keys; the prompt keys are always visible
            attn_mask = F.pad(attn_mask, (key.shape[2], 0), value=0.0)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=a.attn_drop.p if a.training else 0.0)
        x = a.norm(x.transpose(1, 2).reshape(B, N, a.attn_dim))
        return a.proj_drop(a.proj(x))


class KVPrompts(Method):
    name = "kv_prompts"
    kind = "module"
    config_class = KVPromptOptions
    modifies_backbone = True

    def validate(self, cfg) -> None:
        require_int(cfg.length, "length", minimum=1)
        require_fraction(cfg.dropout, "dropout")

    def attach(self, model) -> None:
        from timm.layers.attention import Attention

        backbone, cfg = model.backbone, model.prompt_config
        blocks = list(backbone.blocks) if backbone.supports_token_prompts else []
        if not blocks or not all(type(getattr(b, "attn", None)) is Attention and b.attn.gate is None for b in blocks):
            raise ConfigError(f"prompt=kv_prompts adds key/value tokens to timm ViT attention; {backbone.name} has "
                              "no token attention of that kind (use a timm ViT, or a pixel prompt: pad, patch)")
        for block in blocks:
            block.attn = KVPromptAttention(block.attn, cfg.length, bool(cfg.share_kv), float(cfg.dropout),
                                           backbone.patch_size)


register_method(KVPrompts())
