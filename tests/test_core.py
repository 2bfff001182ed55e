"""Properties of the core API (issue: prompt-tuned frozen encoders)."""
import copy
import math

import pytest
import timm
import torch
import torch.nn.functional as F

import vpt
from vpt import PromptConfig, PromptedModel
from conftest import tiny_vit

METHODS_ON_VIT = ["linear", "shallow", "deep", "pad", "patch", "random_patch", "bias", "full"]


def _make(method, **kw):
    kw.setdefault("length", 4)
    kw.setdefault("size", 4)
    return PromptedModel(tiny_vit(), PromptConfig(method=method, **kw), num_classes=5)


def _train_steps(model, steps=3):
    opt = torch.optim.SGD(model.trainable_parameters(), lr=0.5, momentum=0.9)
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 5, (6,))
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return opt


@pytest.mark.parametrize("method", ["linear", "shallow", "deep", "pad", "patch", "random_patch"])
def test_backbone_bit_identical_after_training(method):
    model = _make(method)
    before = copy.deepcopy(model.backbone.state_dict())
    trainable_before = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    opt = _train_steps(model)
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, before[key]), key
    # the optimiser holds exactly the prompt + head tensors, and they moved
    in_opt = {id(p) for group in opt.param_groups for p in group["params"]}
    expected = {id(p) for name, p in model.named_parameters() if not name.startswith("backbone.")}
    assert in_opt == expected
    assert all(not torch.equal(v, trainable_before[k]) for k, v in model.trainable_state_dict().items())
    assert not any(k.startswith("backbone.") for k in model.trainable_state_dict())


def test_bias_tuning_changes_only_biases():
    model = _make("bias")
    before = copy.deepcopy(model.backbone.state_dict())
    _train_steps(model)
    changed = {k for k, v in model.backbone.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.endswith("bias") for k in changed)


def test_full_finetuning_trains_backbone():
    model = _make("full")
    assert model.param_summary()["backbone"] == sum(p.numel() for p in model.backbone.parameters())
    model.eval()
    assert not model.backbone.training
    model.train()  # unlike the frozen methods, full fine-tuning trains the backbone in train mode
    assert model.backbone.training
    before = copy.deepcopy(model.backbone.state_dict())
    _train_steps(model, steps=1)
    assert any(not torch.equal(v, before[k]) for k, v in model.backbone.state_dict().items())


@pytest.mark.parametrize("method", ["deep", "shallow", "pad", "linear", "bias"])
def test_frozen_backbone_stays_in_eval_mode(method):
    model = PromptedModel(tiny_vit(drop_rate=0.5, drop_path_rate=0.5), PromptConfig(method=method, length=3, size=4), num_classes=3)
    model.train()
    assert model.training and not model.backbone.training
    assert not any(m.training for m in model.backbone.modules())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.forward_features(x), model.forward_features(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    "make_model",
    [
        lambda: tiny_vit(num_classes=7),
        lambda: tiny_vit(num_classes=7, reg_tokens=4, class_token=True),  # DINOv2-style registers
        lambda: tiny_vit(num_classes=7, global_pool="avg", fc_norm=True),
        lambda: timm.create_model("deit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=7),
    ],
    ids=["vit", "vit_reg4", "vit_avgpool", "deit"],
)
@pytest.mark.parametrize("method", ["deep", "pad"])
def test_disabled_prompts_equal_unmodified_timm(make_model, method):
    reference = make_model().eval()
    model = PromptedModel(copy.deepcopy(reference), PromptConfig(method=method, length=0, size=0)).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = reference(x)
        # the default path computes only the class token in the last block: other matmul shapes, same function
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)
        model.fast_prompt_path = False  # timm's own blocks, bit for bit
        assert torch.equal(model(x), expected)


def test_disabled_prompts_equal_unmodified_open_clip():
    import open_clip

    clip = open_clip.create_model("ViT-B-32").eval()
    reference = copy.deepcopy(clip)
    model = PromptedModel(clip.visual, "deep", length=0).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model(x), reference.encode_image(x))


# ---- a direct, hand-written VPT (paper definition) on the same weights -------------------------
def _layer_norm(x, ln):
    return F.layer_norm(x, (x.shape[-1],), ln.weight, ln.bias, ln.eps)


def _reference_block(x, blk):
    """Pre-norm ViT layer written from the definition: x + MSA(LN(x)); x + MLP(LN(x))."""
    attn = blk.attn
    b, n, d = x.shape
    h = attn.num_heads
    qkv = _layer_norm(x, blk.norm1) @ attn.qkv.weight.t() + attn.qkv.bias
    q, k, v = qkv.reshape(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // h), dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(b, n, d)
    x = x + out @ attn.proj.weight.t() + attn.proj.bias
    hidden = F.gelu(_layer_norm(x, blk.norm2) @ blk.mlp.fc1.weight.t() + blk.mlp.fc1.bias)
    return x + hidden @ blk.mlp.fc2.weight.t() + blk.mlp.fc2.bias


def _reference_vpt(vit, prompts_by_layer, images):
    """VPT (Jia et al. 2022, eq. 1-2 / 5-6): [cls, P, patches]; deep layers get fresh prompts."""
    b = images.shape[0]
    patches = F.conv2d(images, vit.patch_embed.proj.weight, vit.patch_embed.proj.bias, stride=vit.patch_embed.patch_size)
    patches = patches.flatten(2).transpose(1, 2)
    x = torch.cat([vit.cls_token.expand(b, -1, -1), patches], 1) + vit.pos_embed
    length = 0
    for i, blk in enumerate(vit.blocks):
        if i in prompts_by_layer:
            p = prompts_by_layer[i].expand(b, -1, -1)
            x = torch.cat([x[:, :1], p, x[:, 1 + length:]], 1)
            length = p.shape[1]
        x = _reference_block(x, blk)
    return _layer_norm(x, vit.norm)[:, 0]


@pytest.mark.parametrize("method,depth,expected_layers", [("shallow", None, [0]), ("deep", None, [0, 1, 2, 3]), ("deep", [0, 2], [0, 2]), ("deep", [1, 3], [1, 3])])
def test_vpt_equals_hand_written_definition(method, depth, expected_layers):
    vit = tiny_vit().eval()
    model = PromptedModel(vit, PromptConfig(method=method, length=5, depth=depth), num_classes=0).eval()
    assert model.token_prompts.layers == expected_layers
    prompts = {layer: model.token_prompts.embeddings[slot] for layer, slot in model.token_prompts.slot.items()}
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ours = model.forward_features(x)
        reference = _reference_vpt(vit, prompts, x)
    assert (ours - reference).abs().max().item() <= 1e-5


def test_prompts_sit_after_class_and_register_tokens():
    vit = tiny_vit(reg_tokens=2).eval()
    model = PromptedModel(vit, PromptConfig(method="shallow", length=3), num_classes=0).eval()
    seen = {}
    vit.blocks[0].register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    with torch.no_grad():
        model.forward_features(torch.randn(1, 3, 32, 32))
    # 1 class + 2 register tokens, then the 3 prompts, then 16 patches
    assert seen["x"].shape[1] == 1 + 2 + 3 + 16
    torch.testing.assert_close(seen["x"][0, 3:6], model.token_prompts.embeddings[0])


def test_trainable_parameter_count_vit_b16_deep_50():
    model = PromptedModel(vpt.create_backbone("vit_base_patch16_224", pretrained=False), PromptConfig(method="deep", length=50), num_classes=100)
    summary = model.param_summary()
    assert summary["prompt"] == 12 * 50 * 768 == 460_800
    assert summary["head"] == 768 * 100 + 100
    assert summary["trainable"] == 460_800 + 76_900
    assert summary["total"] == sum(p.numel() for p in model.parameters())


def test_prompt_projection_and_dropout_shapes():
    model = PromptedModel(tiny_vit(), PromptConfig(method="deep", length=6, project_dim=8, dropout=0.1), num_classes=2)
    assert model.param_summary()["prompt"] == 4 * 6 * 8 + 8 * 48 + 48
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 2)


def test_init_prompts_from_patch_embeddings():
    model = PromptedModel(tiny_vit(), PromptConfig(method="deep", length=6, init="patch"), num_classes=2)
    images = torch.randn(3, 3, 32, 32)
    model.init_prompts_from_patches(images)
    patches = model.backbone.embed(images)[:, 1:].reshape(-1, 48)
    rows = model.token_prompts.embeddings.detach().reshape(-1, 48)
    assert all((patches - row).abs().sum(-1).min() == 0 for row in rows)


@pytest.mark.parametrize("method", ["deep", "shallow", "pad", "random_patch", "linear"])
def test_eval_output_independent_of_batch(method):
    model = _make(method, dropout=0.2).eval()
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        together = model(x)
        alone = torch.cat([model(x[i:i + 1]) for i in range(8)])
        shuffled = model(x.flip(0)).flip(0)
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(together, shuffled, rtol=0, atol=1e-5)


def test_dense_patch_grid_removes_class_register_and_prompt_tokens():
    vit = tiny_vit(img_size=48, reg_tokens=4)
    model = PromptedModel(vit, PromptConfig(method="deep", length=7), num_classes=0).eval()
    x = torch.randn(2, 3, 48, 48)
    grid = model.forward_dense(x)
    assert grid.shape == (2, 48, 6, 6)
    with torch.no_grad():
        tokens = model.backbone.model.norm(model.forward_tokens(x))
    torch.testing.assert_close(grid.detach().flatten(2).transpose(1, 2), tokens[:, 5:])


def test_pixel_prompts_on_a_cnn_and_token_prompts_refused():
    cnn = timm.create_model("resnet18", num_classes=0)
    model = PromptedModel(cnn, PromptConfig(method="pad", size=20), num_classes=3)
    assert model.param_summary()["prompt"] == 2 * 3 * 20 * 224 + 2 * 3 * (224 - 40) * 20
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 3)
    with pytest.raises(vpt.ConfigError, match="pixel prompt"):
        PromptedModel(timm.create_model("resnet18", num_classes=0), "deep", num_classes=3)


def test_pad_prompt_is_a_frame_added_to_the_image():
    model = _make("pad", size=4)
    frame = model.pixel_prompt.prompt_image()
    assert frame.shape == (1, 3, 32, 32)
    assert torch.count_nonzero(frame[..., 4:28, 4:28]) == 0 and torch.count_nonzero(frame[..., :4, :]) == 3 * 4 * 32


def test_bahng_setup_clip_pad_prompt_with_frozen_zero_shot_head():
    backbone = vpt.create_backbone("open_clip:ViT-B-32", pretrained=False)
    head = vpt.ZeroShotHead.from_clip(backbone.clip_model, backbone.tokenizer, ["cat", "dog"], ["a photo of a {}."])
    model = PromptedModel(backbone, PromptConfig(method="pad", size=30), head=head, class_names=["cat", "dog"])
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "pixel_prompt.pad_up", "pixel_prompt.pad_down", "pixel_prompt.pad_left", "pixel_prompt.pad_right"}
    # the head is CLIP's zero-shot classifier: cosine(image, text("a photo of a cat")) * logit scale
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        text = F.normalize(backbone.clip_model.encode_text(backbone.tokenizer(["a photo of a cat.", "a photo of a dog."])), dim=-1)
        image = F.normalize(backbone.clip_model.encode_image(model.pixel_prompt(x)), dim=-1)
        expected = backbone.clip_model.logit_scale.exp() * image @ text.t()
        torch.testing.assert_close(model.eval()(x), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="deep", length=-1), "prompt.length"),
    (dict(method="deep", length=3, depth=[0, 9]), "prompt.depth"),
    (dict(method="sideways"), "valid names"),
    (dict(method="pad", size=16), "prompt.size"),
])
def test_bad_prompt_settings_raise_clear_errors(kwargs, match):
    with pytest.raises(vpt.ConfigError, match=match):
        PromptedModel(tiny_vit(), PromptConfig(**kwargs), num_classes=2)


def test_image_size_not_divisible_by_patch_is_reported():
    backbone = vpt.wrap_model(tiny_vit())
    with pytest.raises(vpt.ConfigError, match="not divisible by the patch size 8x8"):
        backbone.check_input_size(30, 32)


def test_whole_open_clip_instance_brings_its_text_tower():
    import open_clip

    clip = open_clip.create_model("ViT-B-32").eval()
    model = PromptedModel(clip, PromptConfig("shallow", length=2), num_classes=0)
    assert model.backbone.clip_model is clip
    assert not any("token_embedding" in name for name, _ in model.named_parameters())  # text tower not in the model
    assert sum(p.numel() for p in model.backbone.parameters()) == sum(p.numel() for p in clip.visual.parameters())
    head = vpt.ZeroShotHead.from_clip(model.backbone.clip_model, model.backbone.tokenizer, ["a", "b", "c"])
    assert head.weight.shape == (3, 512)


def test_torch_compile_gives_the_eager_prompt_gradients():
    """trainer.compile=true wraps the model in torch.compile: the prompted forward (views of qkv, prompt rows
    appended once per batch, the first layer's custom backward) must trace and give eager's gradients."""
    torch.manual_seed(0)
    eager = _make("deep").train()
    compiled = copy.deepcopy(eager)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    F.cross_entropy(eager(x), y).backward()
    F.cross_entropy(torch.compile(compiled)(x), y).backward()
    grads = [(a.grad, b.grad) for a, b in zip(eager.trainable_parameters(), compiled.trainable_parameters())]
    assert len(grads) == 3 and all(b is not None for _, b in grads)  # prompts, head weight and bias
    for a, b in grads:
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
