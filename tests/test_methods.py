"""Methods are registered objects: a toy method registered here, from the test file, trains through vpt-train."""
import json
import sys

import pytest
import torch
from torch import nn

import vpt
import vpt.tools.cli
from vpt.methods import Method, get_method, method_names, register_method, unregister_method


class ColourShiftPrompt(nn.Module):
    """A learnable offset per colour channel, added to the normalised image."""

    def __init__(self, image_size):
        super().__init__()
        self.image_size = tuple(image_size)
        self.shift = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def prompt_image(self):
        return self.shift.expand(1, 3, *self.image_size)

    def forward(self, images):
        return images + self.shift.to(images.dtype)


class ColourShift(Method):
    name = "toy_colour_shift"
    kind = "pixel"

    def build(self, cfg, backbone, input_size):
        return {"pixel_prompt": ColourShiftPrompt(input_size)}


@pytest.fixture
def toy_method():
    method = register_method(ColourShift())
    yield method
    unregister_method(method.name)


def test_builtin_methods_say_what_they_train():
    assert method_names() == ("linear", "full", "bias", "shallow", "deep", "pad", "patch", "random_patch",
                              "partial", "mlp", "sidetune", "adapter", "adaptformer", "ssf", "lora", "kv_prompts",
                              "coop", "cocoop", "maple", "ivlp")
    assert method_names("clip") == ("coop", "cocoop", "maple", "ivlp")
    assert all(get_method(m).builds_head for m in method_names("clip"))
    assert [m for m in method_names("clip") if not get_method(m).shareable_in_bank] == ["cocoop"]
    assert [m for m in method_names() if get_method(m).tunes_backbone] == ["full", "bias", "partial"]
    assert method_names("module") == ("adapter", "adaptformer", "ssf", "lora", "kv_prompts")
    assert [m for m in method_names() if not get_method(m).backbone_eval_mode] == ["full"]
    assert method_names("token") == ("shallow", "deep") and method_names("pixel") == ("pad", "patch", "random_patch")
    with pytest.raises(vpt.ConfigError, match="unknown prompt method 'sideways'; valid names: adapter, adaptformer, bias, cocoop"):
        get_method("sideways")


def test_a_registered_method_trains_through_vpt_train(toy_method, tmp_path, monkeypatch):
    config_dir = tmp_path / "configs" / "prompt"
    config_dir.mkdir(parents=True)
    (config_dir / "toy_colour_shift.yaml").write_text("method: toy_colour_shift\ntrain_head: true\n")
    run = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", [
        "vpt-train", f"hydra.searchpath=[file://{tmp_path / 'configs'}]", "prompt=toy_colour_shift", "logger=none",
        "trainer.epochs=2", "trainer.progress_bar=false", "trainer.cpu_threads=1", "data.train_size=64",
        f"hydra.run.dir={run}"])
    vpt.tools.cli.train_main()
    results = json.loads((run / "results.json").read_text())
    assert results["method"] == "toy_colour_shift" and results["status"] == "completed"
    # trainable: the 3 channel offsets + the 5-class head on the digits ViT's 64-wide feature
    assert results["prompt_params"] == 3 and results["trainable_params"] == 3 + 5 * 64 + 5
    shift = vpt.read_prompt_file(run / "last")[1]["pixel_prompt.shift"]
    assert shift.abs().sum() > 0  # it was trained (it starts at zero)

    # the prompt file rebuilds the model through the registry, and a bank serves the task
    backbone = vpt.create_backbone("vit_tiny_patch16_224", pretrained=vpt.tools.cli.asset_path("digits_vit.safetensors"),
                                   image_size=16, patch_size=4, embed_dim=64, depth=6, num_heads=4,
                                   pretrained_cfg_overlay={"mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 1.0})
    model = vpt.PromptedModel.from_prompt_file(run / "last", backbone=backbone).eval()
    bank = vpt.PromptBank(backbone)
    bank.add_task("toy", run / "last")
    images = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(bank(images, ["toy"] * 4), model(images), rtol=1e-5, atol=1e-5)


def test_a_method_that_tunes_the_backbone_is_refused_by_the_bank(tiny_vit_factory):
    vit = tiny_vit_factory()
    model = vpt.PromptedModel(vit, prompt="bias", num_classes=3)
    with pytest.raises(vpt.ConfigError, match="tunes backbone weights"):
        vpt.PromptBank(vit).add_task("bitfit", model)


@pytest.mark.parametrize("method", ["deep", "lora", "kv_prompts", "mlp"])
@pytest.mark.parametrize("dropout", [1.0, -0.1, "often", True])
def test_a_dropout_outside_0_1_is_one_message(method, dropout):
    with pytest.raises(vpt.ConfigError, match=r"prompt\.dropout must be in \[0, 1\)"):
        vpt.PromptConfig(method, dropout=dropout)
    assert vpt.PromptConfig(method, dropout=0.25).dropout == 0.25
