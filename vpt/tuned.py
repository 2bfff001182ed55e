"""The one interface of a tuned model: what the training loop, ``vpt-eval``, the tasks and the bank use.

:class:`TunedModel` is that interface as a ``Protocol``; :class:`PromptedModel <vpt.model.PromptedModel>` and
:class:`DetectorModel <vpt.detection.detector_model.DetectorModel>` both satisfy it by deriving from
:class:`TunedModule`, which implements the shared parts once: the trainable state (the tensors with
``requires_grad``, all a prompt file stores), loading such a state with one mismatch message, and saving / loading
prompt files through :mod:`vpt.prompt_file`.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Protocol, runtime_checkable

import torch
from torch import nn

from .errors import PromptFileError
from .prompt_file import check_backbone, read_prompt_file, save_prompt

if TYPE_CHECKING:
    from .backbones import BackboneAdapter
    from .config import PromptConfig

SHOWN_NAMES = 5  # tensor names listed per kind of mismatch; the rest are counted


@runtime_checkable
class TunedModel(Protocol):
    """A frozen backbone plus what was tuned on it, saved and loaded as a prompt file."""

    prompt_config: PromptConfig
    backbone: BackboneAdapter
    backbone_fingerprint: str  # the encoder's weights before tuning: prompt files are checked against it

    def param_summary(self) -> dict[str, int]: ...

    def trainable_parameters(self) -> list[nn.Parameter]: ...

    def trainable_state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_trainable_state_dict(self, state: Mapping[str, torch.Tensor], source: Any = None) -> None: ...

    def save_prompt(self, path, **extra: Any) -> Path: ...

    def load_prompt(self, path) -> "TunedModel": ...

    @classmethod
    def from_prompt_file(cls, path, backbone: Any = None, pretrained: Any = None) -> "TunedModel": ...


def state_mismatch(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> str:
    """``missing a, b; unexpected c; shape mismatch d: saved (5,), model (24,)``, or "" when the state fits."""
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    wrong = sorted(f"{k}: saved {tuple(state[k].shape)}, model {tuple(own[k].shape)}"
                   for k in own.keys() & state.keys() if tuple(state[k].shape) != tuple(own[k].shape))

    def few(items: list[str]) -> str:
        more = len(items) - SHOWN_NAMES
        return ", ".join(items[:SHOWN_NAMES]) + (f" (+{more} more)" if more > 0 else "")

    return "; ".join(f"{label} {few(items)}" for label, items in
                     (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong)) if items)


class TrainableState(nn.Module):
    """The tensors that train (``requires_grad``), as a state dict that loads back only where it fits exactly."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    def mismatch_fix(self) -> str:
        """The likely fix named by the mismatch message."""
        return f"build the {type(self).__name__} with the settings the state was saved with"

    @torch.no_grad()
    def load_trainable_state_dict(self, state: Mapping[str, torch.Tensor], source: Any = None) -> None:
        """Copy tensors saved by :meth:`trainable_state_dict`; names and shapes must match exactly.

        ``source``: the prompt file the state was read from, named in the one message a mismatch raises."""
        own = {name: p for name, p in self.named_parameters() if p.requires_grad}
        problems = state_mismatch(own, state)
        if problems:
            what = f"prompt file {str(source)!r}" if source is not None else "trainable state"
            raise PromptFileError(f"{what} does not fit this model ({type(self).__name__}): {problems}. "
                                  f"Likely fix: {self.mismatch_fix()}")
        for name, param in own.items():
            param.copy_(state[name].to(param.dtype))


class TunedModule(TrainableState):
    """Prompt files for a model with the :class:`TunedModel` attributes (``backbone``, ``prompt_config``, ...).

    Subclasses add :meth:`prompt_file_extra` (manifest keys beyond the common ones) and ``from_prompt_file``."""

    def mismatch_fix(self) -> str:
        return f"build the model from the file instead: {type(self).__name__}.from_prompt_file(path, backbone)"

    def prompt_file_extra(self) -> dict[str, Any]:
        """Manifest keys of this kind of model (a detector's task and settings); none by default."""
        return {}

    def save_prompt(self, path, **extra: Any) -> Path:
        """Write ``path/prompt.safetensors`` (trainable tensors only) + ``path/prompt.json``; returns the directory."""
        return save_prompt(self, path, **{**self.prompt_file_extra(), **extra})

    def load_prompt(self, path):
        """Load a prompt file made for this model's backbone weights and trainable tensors."""
        manifest, tensors = read_prompt_file(path)
        self.load_prompt_contents(manifest, tensors, path)
        return self

    def load_prompt_contents(self, manifest: dict[str, Any], tensors: dict[str, torch.Tensor], path) -> None:
        """Load an already read prompt file (``read_prompt_file``): same backbone weights, then the tensors."""
        check_backbone(manifest, self.backbone, path, self.backbone_fingerprint)
        self.load_trainable_state_dict(tensors, source=path)
