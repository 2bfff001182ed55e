"""Tuning methods as registered objects. Importing this package registers the built-in ones."""
from .base import METHODS, Method, NoOptions, get_method, method_names, register_method, unregister_method
from . import baselines, token, pixel  # noqa: F401  (registration, in the order `method_names()` lists them)
from . import vpt_baselines, adapters, lora, kv_prompts, clip  # noqa: F401,E402

__all__ = ["METHODS", "Method", "NoOptions", "get_method", "method_names", "register_method", "unregister_method"]
