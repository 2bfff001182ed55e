"""Backbone adapters. Importing this package registers the built-in adapters."""
from .base import BackboneAdapter, adapter_classes, register_adapter, wrap_model
from .factory import create_backbone
from . import open_clip_vit, timm_vit  # noqa: F401  (registration; ViT adapters before the generic one)

__all__ = ["BackboneAdapter", "adapter_classes", "create_backbone", "register_adapter", "wrap_model"]
