import os

# Nothing in the test suite may touch the network: hub lookups fail fast, wandb writes offline files.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_vit(**kwargs):
    """A small random-init timm ViT (the architecture family of ViT-B/16, shrunk)."""
    import timm

    args = dict(img_size=32, patch_size=8, embed_dim=48, depth=4, num_heads=3, num_classes=0)
    args.update(kwargs)
    return timm.create_model("vit_tiny_patch16_224", **args)


@pytest.fixture
def tiny_vit_factory():
    """``tiny_vit`` as a fixture: ``tiny_vit_factory(**kwargs)`` builds a small random-init timm ViT."""
    return tiny_vit
