"""vpt: visual prompt tuning for frozen ViT and CLIP encoders."""
__version__ = "0.1.0"

from .backbones import BackboneAdapter, create_backbone, register_adapter, wrap_model  # noqa: E402
from .bank import PromptBank  # noqa: E402
from .config import METHODS, PromptConfig  # noqa: E402
from .errors import ConfigError, PromptFileError, UnknownNameError, VptError, WeightsUnavailableError  # noqa: E402
from .heads import LinearHead, ZeroShotHead  # noqa: E402
from .model import PromptedModel  # noqa: E402
from .model import load_prompted_model  # noqa: E402
from .prompt_file import read_prompt_file, save_prompt  # noqa: E402

__all__ = [
    "BackboneAdapter", "ConfigError", "LinearHead", "METHODS", "PromptBank", "PromptConfig", "PromptFileError",
    "PromptedModel", "UnknownNameError", "VptError", "WeightsUnavailableError", "ZeroShotHead", "create_backbone",
    "load_prompted_model", "read_prompt_file", "register_adapter", "save_prompt", "wrap_model",
]
