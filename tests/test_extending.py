"""The README's "add a backbone family" claim, done from outside vpt: torchvision's VisionTransformer (a family vpt
does not ship) gets one adapter class (this file) and one config file (a hydra.searchpath folder), then trains with
deep prompts through vpt-train and is scored again by vpt-eval; no file of vpt is touched. The same claims for a
method (tests/test_methods.py::test_a_registered_method_trains_through_vpt_train) and a task
(tests/test_registry.py::test_a_task_from_the_test_file_is_found_and_trains) are tested there."""
import json
import sys

import pytest
import torch
from torchvision.models.vision_transformer import VisionTransformer

import vpt
import vpt.tools.cli
from vpt.backbones import BackboneAdapter, register_adapter, wrap_model
from vpt.backbones.base import ADAPTERS

TINY = dict(image_size=16, patch_size=4, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)


class TorchvisionViTAdapter(BackboneAdapter):
    """torchvision.models.VisionTransformer in steps: _process_input + class token + positions, encoder.layers,
    encoder.ln + the class token (its own forward, heads left out)."""

    @classmethod
    def accepts(cls, model):
        return isinstance(model, VisionTransformer)

    def __init__(self, model, name):
        super().__init__(model, name)
        self.embed_dim = self.feature_dim = model.hidden_dim
        self.num_prefix_tokens = 1
        self.patch_size = (model.patch_size, model.patch_size)

    @property
    def blocks(self):
        return self.model.encoder.layers

    def run_block(self, index, tokens, attn_bias=None):
        return self.blocks[index](tokens)

    def embed(self, images):
        tokens = self.model._process_input(images)
        tokens = torch.cat([self.model.class_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        return self.model.encoder.dropout(tokens + self.model.encoder.pos_embedding)

    def finish(self, tokens, need_tokens=False):
        tokens = self.model.encoder.ln(tokens)
        return tokens[:, 0], tokens

    @property
    def pools_first_token(self):
        return True

    def data_config(self):
        size = self.model.image_size
        return {"input_size": (3, size, size), "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear",
                "crop_pct": 1.0}

    def encoder_state_dict(self):
        return {k: v for k, v in self.model.state_dict().items() if not k.startswith("heads.")}


@pytest.fixture(autouse=True)
def registered_only_here():
    register_adapter(TorchvisionViTAdapter)  # what `@register_adapter` on the class does in a user's module
    yield
    ADAPTERS.unregister("TorchvisionViTAdapter")  # other test files see the built-in adapters alone


def test_the_adapter_runs_torchvisions_own_forward():
    torch.manual_seed(0)
    model = VisionTransformer(**TINY).eval()
    adapter = wrap_model(model, name="tv_vit")
    assert type(adapter) is TorchvisionViTAdapter
    images = torch.randn(2, 3, 16, 16)
    model.heads = torch.nn.Identity()  # torchvision's forward up to its class-token feature
    torch.testing.assert_close(adapter.forward_features(images), model(images))


def test_a_backbone_family_is_one_adapter_plus_one_config_and_trains_with_deep_prompts(tmp_path, monkeypatch):
    configs = tmp_path / "my_configs" / "backbone"
    configs.mkdir(parents=True)
    (configs / "tv_vit.yaml").write_text(
        "_target_: torchvision.models.VisionTransformer\nname: tv_vit\nlabel: tv_vit\n"
        + "".join(f"{key}: {value}\n" for key, value in TINY.items()))
    run = tmp_path / "run"
    common = [f"hydra.searchpath=[file://{tmp_path / 'my_configs'}]", "trainer.progress_bar=false",
              "trainer.cpu_threads=1"]
    monkeypatch.setattr(sys, "argv", ["vpt-train", "backbone=tv_vit", "prompt=deep", "prompt.length=3", "logger=none",
                                      "data.train_size=64", "trainer.epochs=1", f"hydra.run.dir={run}", *common])
    vpt.tools.cli.train_main()
    results = json.loads((run / "results.json").read_text())
    manifest = json.loads((run / "best" / "prompt.json").read_text())
    assert results["status"] == "completed" and results["backbone"] == "tv_vit"
    assert manifest["backbone"]["adapter"] == "TorchvisionViTAdapter"
    assert results["trainable_params"] == 2 * 3 * 32 + (32 + 1) * 5  # deep prompts in 2 layers + a 5-class head
    # vpt-eval rebuilds the backbone from the run's config (seeded as training) and scores the same test split
    monkeypatch.setattr(sys, "argv", ["vpt-eval", f"prompt_file={run / 'best'}", f"hydra.run.dir={tmp_path / 'eval'}",
                                      *common])
    vpt.tools.cli.eval_main()
    evaluated = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert evaluated["test_top1"] == pytest.approx(results["test_top1"])
