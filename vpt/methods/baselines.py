"""Baselines through the same API: linear probe, full fine-tuning, BitFit (biases only)."""
from __future__ import annotations

from .base import Method, register_method


class LinearProbe(Method):
    name = "linear"


class FullFineTuning(Method):
    name = "full"
    tunes_backbone = True
    backbone_eval_mode = False  # dropout / drop-path act as in the backbone's own training

    def set_trainable(self, backbone) -> None:
        backbone.requires_grad_(True)


class BiasTuning(Method):
    name = "bias"
    tunes_backbone = True

    def set_trainable(self, backbone) -> None:
        for name, param in backbone.named_parameters():
            param.requires_grad_(name.endswith("bias"))


for _method in (LinearProbe(), FullFineTuning(), BiasTuning()):
    register_method(_method)
