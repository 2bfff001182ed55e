"""vpt: visual prompt tuning for frozen ViT and CLIP encoders."""
from .version import __version__

from .backbones import BackboneAdapter, create_backbone, register_adapter, wrap_model
from .bank import PromptBank
from .config import METHODS, PromptConfig
from .errors import ConfigError, PromptFileError, UnknownNameError, VptError, WeightsUnavailableError
from .heads import LinearHead, ZeroShotHead
from .model import PromptedModel
from .model import load_prompted_model
from .prompt_file import read_prompt_file, save_prompt

__all__ = [
    "BackboneAdapter", "ConfigError", "LinearHead", "METHODS", "PromptBank", "PromptConfig", "PromptFileError",
    "PromptedModel", "UnknownNameError", "VptError", "WeightsUnavailableError", "ZeroShotHead", "create_backbone",
    "load_prompted_model", "read_prompt_file", "register_adapter", "save_prompt", "wrap_model",
]
