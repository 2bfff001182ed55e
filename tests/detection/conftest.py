import pytest
import torch


def _tiny_timm_vit(dynamic: bool = True, patch_size: int = 8, img_size: int = 64, **kwargs):
    import timm

    args = dict(img_size=img_size, patch_size=patch_size, embed_dim=48, depth=2, num_heads=3, num_classes=0,
                dynamic_img_size=dynamic)
    args.update(kwargs)
    return timm.create_model("vit_tiny_patch16_224", **args)


@pytest.fixture
def make_encoder():
    """Factory: a PromptedModel (no head) on a tiny random-init timm ViT, 64 px, patch 8, width 48, 2 blocks."""
    from vpt.model import PromptedModel

    def make(prompt: str = "deep", length: int = 4, seed: int = 0, dynamic: bool = True, patch_size: int = 8,
             img_size: int = 64, **prompt_overrides):
        torch.manual_seed(seed)  # the same seed gives the same frozen weights
        vit = _tiny_timm_vit(dynamic, patch_size, img_size)
        return PromptedModel(vit, prompt=prompt, length=length, num_classes=0, **prompt_overrides)

    return make


@pytest.fixture(autouse=True)
def _one_thread():
    """Detection tests run on one CPU thread (the machine is shared); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
