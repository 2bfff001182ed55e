"""Backbones by name, by instance and from local files; clear errors for every bad input."""
import pytest
import timm
import torch

import vpt
from vpt import PromptConfig, PromptedModel


def test_local_checkpoint_formats_load_the_saved_weights(tmp_path):
    from safetensors.torch import save_file

    source = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10)
    state = source.state_dict()
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save(state, tmp_path / "w.pth")
    torch.save({"state_dict": state}, tmp_path / "w.bin")
    for name in ("w.safetensors", "w.pth", "w.bin"):
        adapter = vpt.create_backbone("vit_tiny_patch16_224", pretrained=str(tmp_path / name), img_size=32, patch_size=8)
        loaded = adapter.model.state_dict()
        assert all(torch.equal(loaded[k], state[k]) for k in loaded), name
        assert adapter.create_args["pretrained"].endswith(name)


def test_npz_checkpoint_through_timm_reader(tmp_path):
    import numpy as np

    source = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=0)
    # big_vision layout for the few tensors we check; timm's reader maps them
    adapter = vpt.create_backbone("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, pretrained=False)
    w = {k: v.detach().numpy() for k, v in source.state_dict().items()}
    npz = {"embedding/kernel": w["patch_embed.proj.weight"].transpose(2, 3, 1, 0), "embedding/bias": w["patch_embed.proj.bias"],
           "cls": w["cls_token"], "Transformer/posembed_input/pos_embedding": w["pos_embed"],
           "Transformer/encoder_norm/scale": w["norm.weight"], "Transformer/encoder_norm/bias": w["norm.bias"]}
    for i in range(2):
        p, b = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        npz.update({p + "LayerNorm_0/scale": w[b + "norm1.weight"], p + "LayerNorm_0/bias": w[b + "norm1.bias"],
                    p + "LayerNorm_2/scale": w[b + "norm2.weight"], p + "LayerNorm_2/bias": w[b + "norm2.bias"]})
        qkv_w, qkv_b = w[b + "attn.qkv.weight"], w[b + "attn.qkv.bias"]
        for j, n in enumerate("query key value".split()):
            npz[p + f"MultiHeadDotProductAttention_1/{n}/kernel"] = qkv_w[j * 192:(j + 1) * 192].T.reshape(192, 3, 64)
            npz[p + f"MultiHeadDotProductAttention_1/{n}/bias"] = qkv_b[j * 192:(j + 1) * 192].reshape(3, 64)
        npz[p + "MultiHeadDotProductAttention_1/out/kernel"] = w[b + "attn.proj.weight"].T.reshape(3, 64, 192)
        npz[p + "MultiHeadDotProductAttention_1/out/bias"] = w[b + "attn.proj.bias"]
        for j, n in enumerate(("fc1", "fc2")):
            npz[p + f"MlpBlock_3/Dense_{j}/kernel"] = w[b + f"mlp.{n}.weight"].T
            npz[p + f"MlpBlock_3/Dense_{j}/bias"] = w[b + f"mlp.{n}.bias"]
    np.savez(tmp_path / "w.npz", **npz)
    adapter = vpt.create_backbone("vit_tiny_patch16_224", pretrained=str(tmp_path / "w.npz"), img_size=32, patch_size=8, depth=2)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(adapter.forward_features(x), source.eval().forward_head(source.forward_features(x), pre_logits=True))


def test_offline_hub_download_names_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(vpt.WeightsUnavailableError) as info:
        vpt.create_backbone("vit_tiny_patch16_224", pretrained=True)
    assert "pretrained=false" in str(info.value) and "local file" in str(info.value)


def test_offline_open_clip_download_names_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(vpt.WeightsUnavailableError, match="pretrained=false"):
        vpt.create_backbone("open_clip:ViT-B-32", pretrained="laion2b_s34b_b79k")


def test_missing_and_corrupt_weight_files(tmp_path):
    with pytest.raises(vpt.WeightsUnavailableError, match="does not exist"):
        vpt.create_backbone("vit_tiny_patch16_224", pretrained=str(tmp_path / "nope.safetensors"))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x13" * 100)
    with pytest.raises(vpt.WeightsUnavailableError, match="truncated, corrupt"):
        vpt.create_backbone("vit_tiny_patch16_224", pretrained=str(bad))
    bad_pth = tmp_path / "bad.pth"
    bad_pth.write_bytes(b"not a pickle")
    with pytest.raises(vpt.WeightsUnavailableError, match="truncated, corrupt"):
        vpt.create_backbone("vit_tiny_patch16_224", pretrained=str(bad_pth))


def test_unknown_backbone_names_suggest_valid_ones():
    with pytest.raises(vpt.UnknownNameError, match="vit_small_patch16_224"):
        vpt.create_backbone("vit_smal_patch16_224")
    with pytest.raises(vpt.UnknownNameError, match="ViT-B-32"):
        vpt.create_backbone("open_clip:ViT-B-33")
    with pytest.raises(vpt.UnknownNameError, match="open_clip"):
        vpt.create_backbone("keras:vit")


def test_existing_instances_and_other_patch_sizes():
    dinov2 = timm.create_model("vit_small_patch14_reg4_dinov2", img_size=56, depth=2, num_classes=0)
    model = PromptedModel(dinov2, PromptConfig("deep", length=3), num_classes=4)
    assert model.backbone.num_prefix_tokens == 5 and model.backbone.patch_size == (14, 14)
    assert model(torch.randn(1, 3, 56, 56)).shape == (1, 4)
    assert model.forward_dense(torch.randn(1, 3, 56, 56)).shape == (1, 384, 4, 4)
    with pytest.raises(TypeError, match="no backbone adapter"):
        vpt.wrap_model(torch.nn.Linear(3, 3))


def test_logs_name_a_reshaped_backbone_as_results_do(caplog):
    """One name everywhere: the digits ViT is vit_p4_d64_l6_16px in the log lines, as in results.json."""
    import logging
    from pathlib import Path

    import vpt

    shape = dict(image_size=16, patch_size=4, embed_dim=64, depth=6, num_heads=4)
    weights = Path(vpt.__file__).parent / "assets" / "digits_vit.safetensors"
    with caplog.at_level(logging.INFO, logger="vpt.backbones.factory"):
        vpt.create_backbone("vit_tiny_patch16_224", pretrained=str(weights), **shape)
        vpt.create_backbone("vit_tiny_patch16_224", pretrained=False, **shape)
    loaded, random_init = [r.getMessage() for r in caplog.records]
    assert "tensors of vit_p4_d64_l6_16px from" in loaded
    assert random_init.startswith("vit_p4_d64_l6_16px: random weights")
    assert "vit_tiny_patch16_224" not in loaded + random_init


# ---- "does this encoder take any input size": the adapter's answer, the method's on top --------------------------
def _open_clip_tower():
    from open_clip.transformer import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=8, width=48, layers=1, heads=3, mlp_ratio=2.0, output_dim=16)


@pytest.mark.parametrize("dynamic", [True, False])
def test_a_timm_vit_takes_any_size_when_built_with_dynamic_img_size(dynamic):
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1, num_classes=0,
                              dynamic_img_size=dynamic)
    adapter = vpt.backbones.wrap_model(model)
    assert type(adapter).__name__ == "TimmViTAdapter" and adapter.takes_any_input_size is dynamic
    if dynamic:  # what the answer promises: another multiple of the patch size runs
        adapter.embed(torch.zeros(1, 3, 40, 48))


def test_an_open_clip_tower_takes_its_built_size_only():
    adapter = vpt.backbones.wrap_model(_open_clip_tower())
    assert type(adapter).__name__ == "OpenCLIPViTAdapter" and adapter.takes_any_input_size is False
    with pytest.raises(RuntimeError):  # what the answer stands for: its position table has the built size
        adapter.embed(torch.zeros(1, 3, 40, 48))


def test_a_cnn_takes_any_size():
    adapter = vpt.backbones.wrap_model(timm.create_model("resnet10t", num_classes=0))
    assert type(adapter).__name__ == "TimmGenericAdapter" and adapter.takes_any_input_size is True


def test_a_users_token_adapter_is_fixed_size_unless_it_says_otherwise():
    from vpt.backbones import BackboneAdapter

    class Tokens(BackboneAdapter):
        pass

    class Convs(BackboneAdapter):
        supports_token_prompts = False

    assert Tokens(torch.nn.Identity(), "t").takes_any_input_size is False
    assert Convs(torch.nn.Identity(), "c").takes_any_input_size is True


@pytest.mark.parametrize("prompt, options, any_size", [("deep", {"length": 2}, True), ("pad", {"size": 4}, False),
                                                       ("pad", {"size": 0}, True), ("linear", {}, True)])
def test_the_model_combines_the_backbone_and_the_methods_answer(prompt, options, any_size):
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1, num_classes=0,
                              dynamic_img_size=True)
    prompted = PromptedModel(model, prompt=prompt, num_classes=3, **options)
    assert prompted.takes_any_input_size is any_size
    fixed = PromptedModel(_open_clip_tower(), prompt=prompt, num_classes=3, **options)
    assert fixed.takes_any_input_size is False
