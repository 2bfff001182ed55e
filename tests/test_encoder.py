"""The one prompted-layer loop against the straightforward evaluation; the encoder fingerprint."""
import json

import pytest
import torch

import vpt
from vpt import PromptConfig, PromptedModel

from conftest import tiny_vit

SETTINGS = [
    ("linear", {}), ("full", {}), ("bias", {}), ("pad", {"size": 4}), ("patch", {"size": 8}),
    ("random_patch", {"size": 8}), ("shallow", {"length": 3}), ("deep", {"length": 3}),
    ("deep", {"length": 2, "depth": [0, 2]}),  # layers 1 and 3 carry the previous prompt outputs
    ("deep", {"length": 2, "depth": [1, 2]}),  # first prompts inserted at layer 1
    ("deep", {"length": 2, "project_dim": 5}),
]


def reference_logits(model: PromptedModel, images: torch.Tensor) -> torch.Tensor:
    """Concatenate the prompts, then run timm's own blocks: the evaluation the VPT paper describes."""
    vit, n, p = model.backbone.model, model.backbone.num_prefix_tokens, 0
    if model.pixel_prompt is not None:
        images = model.pixel_prompt(images)
    tokens = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(images))))
    prompts = model.token_prompts
    for i, block in enumerate(vit.blocks):
        if prompts is not None and i in prompts.slot:
            fresh = prompts.shared_at(i).expand(len(images), -1, -1)
            tokens = torch.cat([tokens[:, :n], fresh, tokens[:, n + p:]], dim=1)
            p = fresh.shape[1]
        tokens = block(tokens)
    tokens = torch.cat([tokens[:, :n], tokens[:, n + p:]], dim=1)
    return model.head(vit.forward_head(vit.norm(tokens), pre_logits=True))


@pytest.mark.parametrize("reg_tokens", [0, 2])
@pytest.mark.parametrize("method,options", SETTINGS)
def test_every_method_equals_concatenate_then_block(method, options, reg_tokens):
    model = PromptedModel(tiny_vit(reg_tokens=reg_tokens, class_token=True), PromptConfig(method, **options),
                          num_classes=4)
    model.eval()
    images = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(model(images), reference_logits(model, images), rtol=1e-5, atol=1e-5)

    # gradients of every trainable tensor too (train mode; the frozen encoder stays in eval mode)
    model.train()
    images = torch.randn(3, 3, 32, 32)
    torch.manual_seed(1)
    ours = torch.autograd.grad(model(images).square().sum(), model.trainable_parameters())
    torch.manual_seed(1)  # the random patch draws the same place
    theirs = torch.autograd.grad(reference_logits(model, images).square().sum(), model.trainable_parameters())
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_bank_rows_equal_each_task_concatenate_then_block():
    vit = tiny_vit()
    models = {name: PromptedModel(vit, PromptConfig(method, **options), num_classes=c).eval()
              for name, (method, options), c in [("a", SETTINGS[7], 3), ("b", SETTINGS[8], 5), ("c", SETTINGS[3], 2),
                                                  ("d", SETTINGS[0], 4), ("e", SETTINGS[9], 3)]}
    for model in models.values():  # make the prompts and heads distinct from their init
        with torch.no_grad():
            for param in model.trainable_parameters():
                param.add_(0.1 * torch.randn_like(param))
    bank = vpt.PromptBank(vit)
    for name, model in models.items():
        bank.add_task(name, model)
    images = torch.randn(10, 3, 32, 32)
    tasks = ["a", "b", "c", "d", "e", "e", "d", "c", "b", "a"]
    mixed = bank(images, tasks)
    with torch.no_grad():
        for row, task in enumerate(tasks):
            expected = reference_logits(models[task], images[row:row + 1])[0]
            torch.testing.assert_close(mixed[row, :len(expected)], expected, rtol=1e-5, atol=1e-5)
            assert torch.isinf(mixed[row, len(expected):]).all()


def test_fingerprint_covers_the_encoder_not_an_unused_classifier(tmp_path):
    vit = tiny_vit(num_classes=7)
    state = {k: v.clone() for k, v in vit.state_dict().items()}
    model = PromptedModel(vit, PromptConfig("deep", length=2), num_classes=3)  # vpt's own head
    model.save_prompt(tmp_path / "task")

    # the same encoder with another classifier, or with none: the file loads
    for classes in (0, 12):
        other = tiny_vit(num_classes=classes)
        other.load_state_dict({k: v for k, v in state.items() if not k.startswith("head.")}, strict=False)
        loaded = PromptedModel.from_prompt_file(tmp_path / "task", backbone=other)
        assert loaded.backbone_fingerprint == model.backbone_fingerprint

    # one changed encoder weight: refused, naming the file
    changed = tiny_vit(num_classes=0)
    changed.load_state_dict({k: v for k, v in state.items() if not k.startswith("head.")})
    with torch.no_grad():
        changed.blocks[1].mlp.fc1.weight[0, 0] += 1e-3
    with pytest.raises(vpt.PromptFileError, match="weights fingerprint"):
        PromptedModel.from_prompt_file(tmp_path / "task", backbone=changed)


def test_prompt_files_with_the_old_whole_model_fingerprint_still_load(tmp_path):
    vit = tiny_vit(num_classes=7)  # the old form hashed this unused classifier too
    model = PromptedModel(vit, PromptConfig("deep", length=2), num_classes=3)
    assert model.backbone.legacy_fingerprint() != model.backbone_fingerprint
    path = model.save_prompt(tmp_path / "old")
    manifest = json.loads((path / "prompt.json").read_text())
    manifest["backbone"]["fingerprint"] = model.backbone.legacy_fingerprint()  # what vpt 0.1 wrote
    del manifest["backbone"]["fingerprint_of"]
    (path / "prompt.json").write_text(json.dumps(manifest))
    loaded = PromptedModel.from_prompt_file(path, backbone=vit)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(images), model.eval()(images))
    with torch.no_grad():
        vit.blocks[0].attn.qkv.weight[0, 0] += 1.0  # and the old form still refuses other weights
    with pytest.raises(vpt.PromptFileError):
        PromptedModel.from_prompt_file(path, backbone=vit)
