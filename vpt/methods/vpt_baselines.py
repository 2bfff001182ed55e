"""The other baselines of VPT's Table 1 (Jia et al., ECCV 2022): Partial-k, MLP-k and Sidetune."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from .base import Method, register_method, require_int


@dataclass
class PartialOptions:
    """k: the last k blocks train (with the final norm), the others stay frozen."""

    k: int = 1


class PartialTuning(Method):
    """Partial-k: fine-tune the last k blocks and the encoder's final norm (VPT's ``partial-k``)."""

    name = "partial"
    config_class = PartialOptions
    tunes_backbone = True

    def validate(self, cfg) -> None:
        require_int(cfg.k, "k", minimum=1)

    def attach(self, model) -> None:
        backbone, k = model.backbone, model.prompt_config.k
        if k > backbone.num_layers:
            raise ConfigError(f"prompt.k={k} but {backbone.name} has {backbone.num_layers} blocks; use "
                              f"prompt.k in 1..{backbone.num_layers} (or prompt=full for every block)")
        for module in [*list(backbone.blocks)[backbone.num_layers - k:], *backbone.tail_modules()]:
            module.requires_grad_(True)


@dataclass
class MlpOptions:
    """k: linear layers in the head (k - 1 hidden layers of the feature width, ReLU, dropout); dropout: between them."""

    k: int = 3
    dropout: float = 0.1


class MlpHead(nn.Module):
    """VPT's ``MLP`` head (``src/models/mlp.py``) without its BatchNorm: running statistics are buffers, which a
    prompt file (trainable tensors only) does not hold. Kaiming-normal (fan-out) weights, zero biases."""

    kind = "mlp"

    def __init__(self, in_features: int, num_classes: int, k: int, dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(k - 1):
            layers += [nn.Linear(in_features, in_features), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
        self.projection = nn.Sequential(*layers)
        self.last_layer = nn.Linear(in_features, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.kaiming_normal_(module.weight, a=0, mode="fan_out")
                nn.init.zeros_(module.bias)
        self.out_features = num_classes

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.last_layer(self.projection(features))


class MlpProbe(Method):
    """MLP-k: a k-layer MLP head on the frozen backbone's pooled feature."""

    name = "mlp"
    config_class = MlpOptions

    def validate(self, cfg) -> None:
        require_int(cfg.k, "k", minimum=1)
        if not 0.0 <= float(cfg.dropout) < 1.0:
            raise ConfigError(f"prompt.dropout must be in [0, 1), got {cfg.dropout!r}")

    def build_head(self, cfg, in_features, num_classes):
        return MlpHead(in_features, num_classes, cfg.k, float(cfg.dropout))

    def bank_refusal(self):
        return "has an MLP head (the bank batches linear and zero-shot heads)"


for _method in (PartialTuning(), MlpProbe()):
    register_method(_method)
