"""Prompt files: trainables only, exact reload, clear errors for the wrong backbone or a broken file."""
import json
import os

import pytest
import torch

import vpt
from vpt import PromptConfig, PromptedModel


@pytest.fixture
def backbone_file(tmp_path):
    """A randomly initialised timm ViT saved as a local "pretrained" checkpoint."""
    from safetensors.torch import save_file

    path = tmp_path / "vit_small_random.safetensors"
    model = vpt.create_backbone("vit_small_patch16_224", pretrained=False).model
    save_file(model.state_dict(), str(path))
    return str(path)


def _trained(model, steps=2):
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(2, 3, *model.input_size[1:])).logsumexp(-1).mean().backward()
        opt.step()
    return model.eval()


def test_roundtrip_on_fresh_backbone_is_exact_and_small(tmp_path, backbone_file):
    names = [f"c{i}" for i in range(10)]
    model = _trained(PromptedModel("vit_small_patch16_224", PromptConfig("deep", length=10), num_classes=10,
                                   class_names=names, pretrained=backbone_file))
    out_dir = model.save_prompt(tmp_path / "task")
    assert sorted(os.listdir(out_dir)) == ["prompt.json", "prompt.safetensors"]
    manifest = json.loads((out_dir / "prompt.json").read_text())
    assert manifest["backbone"]["name"] == "vit_small_patch16_224"
    assert manifest["backbone"]["fingerprint"] == model.backbone_fingerprint
    assert manifest["prompt"]["method"] == "deep" and manifest["prompt"]["length"] == 10
    assert manifest["class_names"] == names and manifest["vpt_version"] == vpt.__version__
    # no backbone weights: file size within 5% of the trainable tensors' bytes
    tensor_bytes = sum(p.numel() * p.element_size() for p in model.trainable_parameters())
    assert tensor_bytes == (12 * 10 * 384 + 384 * 10 + 10) * 4
    assert abs(os.path.getsize(out_dir / "prompt.safetensors") - tensor_bytes) <= 0.05 * tensor_bytes

    fresh = PromptedModel.from_prompt_file(out_dir, pretrained=backbone_file).eval()  # backbone rebuilt from the manifest
    x = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    assert fresh.class_names == names


def test_load_into_existing_model_and_shape_mismatch(tmp_path, tiny_vit_factory):
    vit = tiny_vit_factory()
    model = _trained(PromptedModel(vit, PromptConfig("deep", length=4), num_classes=3))
    model.save_prompt(tmp_path / "p")
    same = PromptedModel(vit, PromptConfig("deep", length=4), num_classes=3).load_prompt(tmp_path / "p").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(same(x), model(x))
    other = PromptedModel(vit, PromptConfig("deep", length=6), num_classes=3)
    with pytest.raises(vpt.PromptFileError, match="does not fit this model"):
        other.load_prompt(tmp_path / "p")


def test_file_for_another_backbone_is_refused(tmp_path, tiny_vit_factory):
    model = PromptedModel(tiny_vit_factory(), PromptConfig("deep", length=4), num_classes=3)
    model.save_prompt(tmp_path / "p")
    other_weights = tiny_vit_factory()  # same architecture, other weights
    with pytest.raises(vpt.PromptFileError, match="was made for backbone"):
        PromptedModel.from_prompt_file(tmp_path / "p", backbone=other_weights)


# each damage gets its own message, naming the broken part and what to do about it
DAMAGE_MESSAGES = {
    "truncate": r"prompt weights '.*prompt\.safetensors' are truncated or corrupt .*re-save them or pick another checkpoint",
    "garbage": r"prompt weights '.*prompt\.safetensors' are truncated or corrupt .*re-save them or pick another checkpoint",
    "manifest": r"prompt manifest '.*prompt\.json' is not valid JSON .*the file is corrupt, re-save it",
    "missing": r"prompt file part '.*prompt\.safetensors' is missing; pass the directory written by save_prompt",
    "other_save": r"'.*prompt\.safetensors' and '.*prompt\.json' come from different saves \(save id .*\); "
                  r"copy both files of one save together",
}


@pytest.mark.parametrize("damage", sorted(DAMAGE_MESSAGES))
def test_corrupt_or_truncated_file_gives_one_clear_error(tmp_path, damage, tiny_vit_factory):
    vit = tiny_vit_factory()
    model = PromptedModel(vit, PromptConfig("deep", length=4), num_classes=3)
    out = model.save_prompt(tmp_path / "p")
    weights = out / "prompt.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "garbage":
        weights.write_bytes(b"\x00" * 64)
    elif damage == "manifest":
        (out / "prompt.json").write_text("{not json")
    elif damage == "missing":
        weights.unlink()
    else:  # the weights of another save (6 prompt tokens) next to this save's manifest (4)
        other = PromptedModel(vit, PromptConfig("deep", length=6), num_classes=3).save_prompt(tmp_path / "other")
        weights.write_bytes((other / "prompt.safetensors").read_bytes())
    with pytest.raises(vpt.PromptFileError, match=DAMAGE_MESSAGES[damage]):
        model.load_prompt(out)


def test_pixel_prompt_and_bias_files(tmp_path, tiny_vit_factory):
    vit = tiny_vit_factory()
    pad = _trained(PromptedModel(vit, PromptConfig("pad", size=4), num_classes=3))
    pad.save_prompt(tmp_path / "pad")
    again = PromptedModel.from_prompt_file(tmp_path / "pad", backbone=vit).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(x), pad(x))
    bias = PromptedModel(tiny_vit_factory(), PromptConfig("bias"), num_classes=3)
    keys = set(bias.trainable_state_dict())
    assert keys and all(k.endswith("bias") or k.startswith("head.") for k in keys)


def test_eval_data_settings_follow_the_recorded_run_unless_another_dataset_is_chosen():
    """vpt-eval's data: the recorded settings, the same data group (README's data=shapes) keeps them, another group
    (digits_source for a digits_target file: both named digits) is scored as configured, data.KEY changes one."""
    from hydra import compose, initialize_config_module

    import vpt.tools.cli
    from vpt.engine.evaluation import eval_data_settings

    vpt.tools.cli.register_resolvers()
    recorded = {"name": "digits", "classes": [5, 6, 7, 8, 9], "train_size": 64, "val_fraction": 0.1}
    manifest = {"data": recorded, "data_seed": 3, "data_choice": "digits_target"}

    def settings(*overrides):
        with initialize_config_module("vpt.configs", version_base="1.3"):
            cfg = compose("eval", overrides=["prompt_file=x", "output_dir=unused", *overrides])
        return eval_data_settings(cfg, manifest, "x", list(overrides))

    assert settings() == (recorded, 3, "the prompt file")
    assert settings("data=digits_target")[0] == recorded
    other, seed, source = settings("data=digits_source", "seed=1")
    assert other["classes"] == [0, 1, 2, 3, 4] and seed == 1 and "trained on digits_target" in source
    changed, _, source = settings("data.val_fraction=0.5")
    assert changed == {**recorded, "val_fraction": 0.5} and source.endswith("with data.val_fraction from the command line")


def test_the_version_is_spelled_once():
    """pyproject.toml reads it from vpt/version.py, so the installed metadata and manifests agree."""
    import importlib.metadata
    from pathlib import Path

    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and "\nversion = " not in pyproject.split("[tool.setuptools")[0]
    assert importlib.metadata.version("vpt") == vpt.__version__
