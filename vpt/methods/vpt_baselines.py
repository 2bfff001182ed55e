"""The other baselines of VPT's Table 1 (Jia et al., ECCV 2022): Partial-k, MLP-k and Sidetune."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from .base import Method, register_method, require_fraction, require_int


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

    def head_spec(self) -> dict:
        """The bank's form: the last layer as a linear head, after this task's hidden layers (``projection``)."""
        return {"weight": self.last_layer.weight, "bias": self.last_layer.bias, "normalize": False, "scale": 1.0,
                "projection": self.projection}


class MlpProbe(Method):
    """MLP-k: a k-layer MLP head on the frozen backbone's pooled feature."""

    name = "mlp"
    config_class = MlpOptions

    def validate(self, cfg) -> None:
        require_int(cfg.k, "k", minimum=1)
        require_fraction(cfg.dropout, "dropout")

    def build_head(self, cfg, in_features, num_classes):
        return MlpHead(in_features, num_classes, cfg.k, float(cfg.dropout))

    def bank_refusal(self):
        return None  # the bank runs each task's hidden layers on its rows, then the last layer as a linear head


@dataclass
class SidetuneOptions:
    """side: the side network: ``alexnet`` (VPT's: torchvision AlexNet features + avgpool, 9216 wide; random init
    unless side_weights names a torchvision AlexNet state-dict file) or ``conv`` (a 3-layer CNN for small images).
    side_weights: a file for the side network's weights, or null."""

    side: str = "alexnet"
    side_weights: str | None = None


class SideNetwork(nn.Module):
    """``sigmoid(alpha) * encoder feature + (1 - sigmoid(alpha)) * projection(side(images))`` (VPT's ``side``)."""

    def __init__(self, side: str, feature_dim: int, weights: str | None) -> None:
        from ..backbones.weights import read_weights_file  # the one checked reader: safetensors or weights-only torch

        super().__init__()
        if side == "alexnet":
            from torchvision.models import alexnet

            net = alexnet(weights=None)
            if weights:
                net.load_state_dict(read_weights_file(weights))
            self.net, width = nn.Sequential(net.features, net.avgpool), 256 * 6 * 6
        else:
            self.net = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
                                     nn.Conv2d(64, 128, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
            if weights:
                self.net.load_state_dict(read_weights_file(weights))
            width = 128
        self.projection = nn.Linear(width, feature_dim, bias=False)
        self.alpha = nn.Parameter(torch.zeros(()))

    def forward(self, images: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        side = self.projection(self.net(images).flatten(1).to(self.projection.weight.dtype))
        a = torch.sigmoid(self.alpha)
        return a * features + (1 - a) * side.to(features.dtype)


class Sidetune(Method):
    """Sidetune (Zhang et al., 2020; VPT's baseline): a trainable side network mixed into the frozen feature."""

    name = "sidetune"
    config_class = SidetuneOptions

    def validate(self, cfg) -> None:
        if cfg.side not in ("alexnet", "conv"):
            raise ConfigError(f"prompt.side must be 'alexnet' or 'conv', got {cfg.side!r}")

    def build(self, cfg, backbone, input_size):
        return {"side": SideNetwork(cfg.side, backbone.feature_dim, cfg.side_weights)}

    def features(self, model, images, features):
        return model.side(images, features)

    def bank_refusal(self):
        return None  # the backbone stays frozen: the bank runs each task's side network on its rows


for _method in (PartialTuning(), MlpProbe(), Sidetune()):
    register_method(_method)
