"""Classification heads on the backbone's pooled feature."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_TEMPLATES = ("a photo of a {}.",)


class LinearHead(nn.Linear):
    """Linear classifier on the pooled feature (class token or average, as the backbone pools)."""

    kind = "linear"

    def head_spec(self) -> dict[str, torch.Tensor | bool | float]:
        bias = self.bias if self.bias is not None else self.weight.new_zeros(self.out_features)
        return {"weight": self.weight, "bias": bias, "normalize": False, "scale": 1.0}


class ZeroShotHead(nn.Module):
    """CLIP zero-shot classifier: cosine similarity to class-name text embeddings, times the logit scale."""

    kind = "zero_shot"

    def __init__(self, text_features: torch.Tensor, logit_scale: float = 100.0, trainable: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(F.normalize(text_features.detach().float(), dim=-1), requires_grad=trainable)
        self.logit_scale = float(logit_scale)
        self.templates: list[str] = list(DEFAULT_TEMPLATES)

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * F.normalize(features, dim=-1) @ self.weight.t().to(features.dtype)

    def head_spec(self) -> dict[str, torch.Tensor | bool | float]:
        return {"weight": self.weight, "bias": self.weight.new_zeros(self.out_features), "normalize": True,
                "scale": self.logit_scale}

    @classmethod
    @torch.no_grad()
    def from_clip(
        cls,
        clip_model: nn.Module,
        tokenizer,
        class_names: Sequence[str],
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        trainable: bool = False,
    ) -> "ZeroShotHead":
        """Average the normalised text embeddings of ``template.format(class)`` over templates."""
        device = next(clip_model.parameters()).device
        weights = []
        for name in class_names:
            tokens = tokenizer([t.format(name) for t in templates]).to(device)
            emb = F.normalize(clip_model.encode_text(tokens).float(), dim=-1).mean(0)
            weights.append(F.normalize(emb, dim=-1))
        scale = float(clip_model.logit_scale.exp().item()) if hasattr(clip_model, "logit_scale") else 100.0
        head = cls(torch.stack(weights), logit_scale=scale, trainable=trainable)
        head.templates = list(templates)
        return head


def zero_shot_head_for(backbone, class_names: Sequence[str], templates: Sequence[str] | None = None,
                       trainable: bool = False) -> ZeroShotHead:
    """The zero-shot head of a CLIP backbone adapter (its text tower) for ``class_names``; one clear error otherwise."""
    from .errors import ConfigError

    if backbone.clip_model is None or backbone.tokenizer is None:
        raise ConfigError(f"a zero-shot head needs a CLIP backbone with a text tower (e.g. backbone=clip_vit_b32, or "
                          f"create_backbone('open_clip:...')); {backbone.name} has none. Use a linear head instead.")
    if not class_names:
        raise ConfigError("a zero-shot head needs the class names")
    return ZeroShotHead.from_clip(backbone.clip_model, backbone.tokenizer, class_names, templates or ["{}"],
                                  trainable=trainable)
