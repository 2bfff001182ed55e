"""The one name a backbone goes by in logs, results.json and prompt files."""
from __future__ import annotations

from typing import Any, Mapping

# timm arguments that change a model's shape, so its registry name no longer says what it is
ARCHITECTURE_KWARGS = ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")


def display_name(name: str, arguments: Mapping[str, Any], adapter) -> str:
    """``name``, unless ``arguments`` reshaped the model: then its shape (``vit_p4_d64_l6_16px``), since
    ``vit_tiny_patch16_224`` with ``patch_size=4, embed_dim=64`` is not a ViT-Tiny/16."""
    if adapter.supports_token_prompts and set(arguments) & set(ARCHITECTURE_KWARGS):
        return shape_name(adapter, family=str(name).rpartition(":")[2].split("_")[0])
    return str(name)


def shape_name(adapter, family: str = "vit") -> str:
    """``<family>_p<patch>_d<width>_l<depth>_<input>px`` from the built model."""
    patch_h, patch_w = adapter.patch_size
    height, width = adapter.data_config()["input_size"][1:]
    patch = f"{patch_h}" if patch_h == patch_w else f"{patch_h}x{patch_w}"
    size = f"{height}" if height == width else f"{height}x{width}"
    return f"{family}_p{patch}_d{adapter.embed_dim}_l{adapter.num_layers}_{size}px"
