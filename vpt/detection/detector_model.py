"""DetectorModel: a :class:`PromptedDetector` with the tuned-model interface (:class:`vpt.tuned.TunedModel`) the
training loop, ``vpt-eval`` and the detection task use.

Its prompt file is the same format as a classification one (``prompt.safetensors`` + ``prompt.json``); the
manifest adds ``"task": "detection"`` and ``"detection"``: the detector's settings and class names, enough to
rebuild it.
"""
from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from ..config import PromptConfig
from ..errors import PromptFileError
from ..model import PromptedModel, _backbone_for
from ..prompt_file import check_backbone, read_prompt_file
from ..tuned import TunedModule
from .model import PromptedDetector


class DetectorModel(TunedModule, PromptedDetector):
    """Build one with :meth:`build` (class names and detector settings, as the detection task does) or
    :meth:`from_prompt_file`; save / load prompt files as any tuned model (:class:`vpt.tuned.TunedModule`)."""

    @classmethod
    def build(cls, encoder: PromptedModel, class_names: Sequence[str], settings: dict[str, Any]) -> "DetectorModel":
        """``settings``: detector, min_size, max_size, pyramid_channels, detector_kwargs (see detector_config)."""
        model = cls(encoder, len(class_names), settings["detector"], min_size=settings["min_size"],
                    max_size=settings["max_size"], pyramid_channels=settings["pyramid_channels"],
                    pyramid_scales=settings.get("pyramid_scales", (4.0, 2.0, 1.0, 0.5)),
                    **settings.get("detector_kwargs", {}))
        model.class_names = list(class_names)
        model.settings = dict(settings)
        return model

    # ---- the tuned-model attributes: the encoder's ------------------------------------------
    @property
    def backbone(self):
        return self.encoder.backbone

    @property
    def prompt_config(self) -> PromptConfig:
        return self.encoder.prompt_config

    @property
    def backbone_fingerprint(self) -> str:
        return self.encoder.backbone_fingerprint

    def param_summary(self) -> dict[str, int]:
        encoder = self.encoder.param_summary()
        heads = sum(p.numel() for m in (self.pyramid, self.detector) for p in m.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        return {"prompt": encoder["prompt"], "head": heads, "backbone": encoder["backbone"],
                "trainable": encoder["prompt"] + encoder["backbone"] + heads, "total": total}

    # ---- prompt files -------------------------------------------------------------------------
    def prompt_file_extra(self) -> dict[str, Any]:
        return {"task": "detection", "detection": {**self.settings, "class_names": self.class_names}}

    @classmethod
    def from_prompt_file(cls, path, backbone: str | nn.Module | None = None, pretrained: Any = None) -> "DetectorModel":
        manifest, tensors = read_prompt_file(path)
        if manifest.get("task") != "detection":
            raise PromptFileError(f"prompt file {str(path)!r} was made for task {manifest.get('task', 'classification')!r}, "
                                  "not detection; load it with vpt.PromptedModel.from_prompt_file")
        backbone = _backbone_for(manifest, path, backbone, pretrained)
        encoder = PromptedModel(backbone, PromptConfig.from_dict(manifest["prompt"]), num_classes=0)
        check_backbone(manifest, encoder.backbone, path, encoder.backbone_fingerprint)
        settings = dict(manifest["detection"])
        model = cls.build(encoder, settings.pop("class_names"), settings)
        model.load_trainable_state_dict(tensors, source=path)
        return model
