"""The comparison zoo: VPT's baselines (Partial-k, MLP-k, Adapter), LoRA through peft, SSF, AdaptFormer and E2VPT-style
key-value prompts. Each equals a straightforward hand-written ViT forward, counts the trainable parameters its paper
gives on ViT-B/16, trains through vpt-train and round-trips through a prompt file."""
import copy
import json
import sys

import pytest
import timm
import torch
import torch.nn.functional as F

import vpt
import vpt.tools.cli
from vpt.backbones.base import BackboneAdapter
from vpt.methods import get_method
from vpt.methods.adapters import ssf_points

ZOO = ("partial", "mlp", "adapter", "adaptformer", "ssf", "lora", "kv_prompts", "sidetune")
SMALL_IMAGES = {"sidetune": {"side": "conv"}}  # AlexNet needs images of 63 px or more


def tiny_vit(**kwargs):
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=3,
                             num_classes=0, **kwargs)


def linear(module, x, weight=None):
    return x @ (module.weight if weight is None else weight).t() + module.bias


def reference_features(vit, images, after=lambda name, t: t, weight=lambda name, w: w, kv=None, mlp_branch=None):
    """A timm ViT's class-token feature, written out op by op. Hooks: ``after(name, output)`` changes an op's output,
    ``weight(name, w)`` a linear's weight, ``kv(layer)`` gives (keys, values) to prepend per head, ``mlp_branch(layer,
    x, mlp_out)`` the MLP branch added to the residual."""
    def ln(module, x):
        return F.layer_norm(x, x.shape[-1:], module.weight, module.bias, module.eps)

    pe = vit.patch_embed.proj
    t = F.conv2d(images, pe.weight, pe.bias, stride=pe.stride).flatten(2).transpose(1, 2)
    t = after("patch_embed", t)
    t = torch.cat([vit.cls_token.expand(len(t), -1, -1), t], dim=1) + vit.pos_embed
    for i, b in enumerate(vit.blocks):
        p = f"blocks.{i}."
        h = after(p + "norm1", ln(b.norm1, t))
        qkv = after(p + "attn.qkv", linear(b.attn.qkv, h, weight(p + "attn.qkv", b.attn.qkv.weight)))
        heads, dim = b.attn.num_heads, t.shape[-1] // b.attn.num_heads
        q, k, v = qkv.reshape(len(t), -1, 3, heads, dim).permute(2, 0, 3, 1, 4)
        if kv is not None:
            pk, pv = kv(i)
            k, v = torch.cat([pk.expand(len(t), -1, -1, -1), k], 2), torch.cat([pv.expand(len(t), -1, -1, -1), v], 2)
        attn = ((q @ k.transpose(-2, -1)) * dim ** -0.5).softmax(-1)
        o = (attn @ v).transpose(1, 2).reshape(t.shape)
        t = t + after(p + "attn.proj", linear(b.attn.proj, o, weight(p + "attn.proj", b.attn.proj.weight)))
        h = after(p + "norm2", ln(b.norm2, t))
        m = after(p + "mlp.fc1", linear(b.mlp.fc1, h, weight(p + "mlp.fc1", b.mlp.fc1.weight)))
        m = after(p + "mlp.fc2", linear(b.mlp.fc2, F.gelu(m), weight(p + "mlp.fc2", b.mlp.fc2.weight)))
        t = t + (m if mlp_branch is None else mlp_branch(i, t, m))
    return after("norm", ln(vit.norm, t))[:, 0]


def randomize(params):
    with torch.no_grad():
        for p in params:
            p.normal_(0, 0.2)


def built(method, **options):
    vit = tiny_vit().eval()
    reference = copy.deepcopy(vit)
    model = vpt.PromptedModel(vit, vpt.PromptConfig(method, **options), num_classes=5).eval()
    return model, reference


def logits(model, features):
    return linear(model.head, features)


IMAGES = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


BANKED = ("mlp", "sidetune")  # the backbone stays frozen and untouched: a bank runs their heads / side nets per task


def test_zoo_methods_are_registered_with_their_own_options():
    for name in ZOO:
        method = get_method(name)
        assert method.shareable_in_bank == (name in BANKED)
        assert vpt.PromptConfig(name).to_dict()["method"] == name
    assert get_method("lora").fields == ("rank", "alpha", "dropout", "targets")


@pytest.mark.parametrize("method", ["adapter", "adaptformer", "lora", "partial"])
def test_zero_init_or_frozen_start_equals_the_frozen_model(method):
    model, reference = built(method)
    with torch.no_grad():
        torch.testing.assert_close(model(IMAGES), logits(model, reference_features(reference, IMAGES)), rtol=1e-5, atol=1e-5)


def test_ssf_at_zero_std_is_the_identity_and_equals_the_reference_with_values():
    model, reference = built("ssf", init_std=0.0)
    with torch.no_grad():
        torch.testing.assert_close(model(IMAGES), logits(model, reference_features(reference, IMAGES)), rtol=1e-5, atol=1e-5)
        randomize(model.ssf.parameters())
        ss = {name: model.ssf[name.replace(".", "_")] for name in ssf_points(model.backbone)}
        expected = reference_features(reference, IMAGES,
                                      after=lambda name, t: t * ss[name].scale + ss[name].shift if name in ss else t)
        assert len(ss) == 2 + 6 * 3
        torch.testing.assert_close(model(IMAGES), logits(model, expected), rtol=1e-5, atol=1e-5)


def test_adapter_equals_the_reference():
    model, reference = built("adapter", reduction_factor=4)
    adapters = [b.mlp.adapter for b in model.backbone.blocks]
    randomize(p for a in adapters for p in a.parameters())

    def branch(i, x, m):
        a = adapters[i]
        return m + linear(a.up, F.gelu(linear(a.down, m)))

    with torch.no_grad():
        torch.testing.assert_close(model(IMAGES), logits(model, reference_features(reference, IMAGES, mlp_branch=branch)),
                                   rtol=1e-5, atol=1e-5)
    assert model.param_summary()["prompt"] == 3 * (48 * 12 + 12 + 12 * 48 + 48)


def test_adaptformer_equals_the_reference():
    model, reference = built("adaptformer", bottleneck=6, scale=0.5)
    adapters = [b.adapter for b in model.backbone.blocks]
    randomize(p for a in adapters for p in a.parameters())

    def branch(i, x, m):
        a = adapters[i]
        return m + 0.5 * linear(a.up, F.relu(linear(a.down, x)))  # the adapter reads the MLP branch's input

    with torch.no_grad():
        torch.testing.assert_close(model(IMAGES), logits(model, reference_features(reference, IMAGES, mlp_branch=branch)),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("targets", [["qkv"], ["qkv", "proj", "fc1", "fc2"]])
def test_lora_through_peft_equals_merged_weights(targets):
    from peft.tuners.lora import LoraLayer

    model, reference = built("lora", rank=2, alpha=6.0, targets=targets)
    layers = {name.replace("backbone.model.", ""): m for name, m in model.named_modules() if isinstance(m, LoraLayer)}
    assert len(layers) == 3 * len(targets)
    randomize(p for m in layers.values() for n, p in m.named_parameters() if "lora_" in n)

    def merged(name, w):
        if name not in layers:
            return w
        m = layers[name]
        return w + (6.0 / 2) * m.lora_B["default"].weight @ m.lora_A["default"].weight

    with torch.no_grad():
        torch.testing.assert_close(model(IMAGES), logits(model, reference_features(reference, IMAGES, weight=merged)),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("share_kv", [True, False])
def test_kv_prompts_equal_the_reference(share_kv):
    model, reference = built("kv_prompts", length=4, share_kv=share_kv)
    attns = [b.attn for b in model.backbone.blocks]

    def kv(i):
        return attns[i].key, (attns[i].key if share_kv else attns[i].value)

    with torch.no_grad():
        torch.testing.assert_close(model(IMAGES), logits(model, reference_features(reference, IMAGES, kv=kv)),
                                   rtol=1e-5, atol=1e-5)
    assert model.param_summary()["prompt"] == 3 * 4 * 48 * (1 if share_kv else 2)


def test_partial_k_trains_the_last_blocks_and_the_final_norm():
    model, reference = built("partial", k=2)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {f"backbone.model.{n}" for n, _ in reference.named_parameters()
                if n.startswith(("blocks.1.", "blocks.2.", "norm."))} | {"head.weight", "head.bias"}
    assert trainable == expected
    randomize(model.backbone.model.blocks[2].parameters())
    with torch.no_grad():
        reference.blocks[2].load_state_dict(model.backbone.model.blocks[2].state_dict())
        torch.testing.assert_close(model(IMAGES), logits(model, reference_features(reference, IMAGES)), rtol=1e-5, atol=1e-5)


def test_mlp_k_head_equals_the_reference():
    model, reference = built("mlp", k=3)
    head = model.head
    with torch.no_grad():
        f = reference_features(reference, IMAGES)
        for layer in (head.projection[0], head.projection[3]):
            f = F.relu(linear(layer, f))
        torch.testing.assert_close(model(IMAGES), linear(head.last_layer, f), rtol=1e-5, atol=1e-5)
    assert model.param_summary() == {**model.param_summary(), "head": 2 * (48 * 48 + 48) + 48 * 5 + 5, "prompt": 0}


def test_sidetune_mixes_a_side_network_into_the_frozen_feature():
    model, reference = built("sidetune", side="conv")
    side = model.side
    with torch.no_grad():
        side.alpha.fill_(0.3)
        a = torch.sigmoid(torch.tensor(0.3))
        expected = a * reference_features(reference, IMAGES) + (1 - a) * side.net(IMAGES).flatten(1) @ side.projection.weight.t()
        torch.testing.assert_close(model(IMAGES), logits(model, expected), rtol=1e-5, atol=1e-5)
    assert model.param_summary()["prompt"] == sum(p.numel() for p in side.parameters())


def test_vit_b16_trainable_counts_match_the_papers(monkeypatch):
    """ViT-B/16 built on the meta device (no weights, no memory): what each method trains besides the head.

    V-PETL Bench (VTAB-1k, ViT-B/16) gives LoRA 0.29M, Adapter 0.16M, SSF 0.21M, AdaptFormer 0.16M (bottleneck 8)."""
    monkeypatch.setattr(BackboneAdapter, "fingerprint", lambda self: "meta")
    counts = {}
    for name, options in [("lora", {}), ("adapter", {"reduction_factor": 96}), ("ssf", {}),
                          ("adaptformer", {"bottleneck": 8}), ("adaptformer", {}), ("adapter", {}),
                          ("kv_prompts", {}), ("partial", {}), ("mlp", {}), ("sidetune", {})]:
        with torch.device("meta"):
            vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
            summary = vpt.PromptedModel(vit, vpt.PromptConfig(name, **options), num_classes=100).param_summary()
        counts[name + "".join(f"_{v}" for v in options.values())] = summary
    method_params = {k: v["prompt"] + v["backbone"] for k, v in counts.items()}
    assert method_params["lora"] == 12 * 8 * (768 + 3 * 768) == 294_912  # 0.29M: r = 8 on the fused qkv (= q and v)
    assert method_params["adapter_96"] == 12 * (2 * 768 * 8 + 8 + 768) == 156_768  # 0.16M
    assert method_params["ssf"] == 2 * (12 * (4 * 768 + 2304 + 3072) + 2 * 768) == 205_824  # 0.21M
    assert method_params["adaptformer_8"] == 156_768  # 0.16M
    assert method_params["adaptformer"] == 12 * (2 * 768 * 64 + 64 + 768) == 1_189_632  # the paper's 64: 1.19M
    assert method_params["adapter"] == 12 * (2 * 768 * 96 + 96 + 768) == 1_779_840  # VPT's reduction factor 8
    assert method_params["kv_prompts"] == 12 * 10 * 768 == 92_160  # E2VPT's shared key-value tokens, 10 per layer
    assert method_params["partial"] == 7_087_872 + 2 * 768 == 7_089_408  # one ViT-B block + the final norm
    assert counts["mlp"]["head"] == 2 * (768 * 768 + 768) + 768 * 100 + 100
    assert method_params["sidetune"] == 2_469_696 + 9216 * 768 + 1 == 9_547_585  # AlexNet features, projection, alpha


@pytest.mark.parametrize("method", ZOO)
def test_prompt_file_round_trip(method, tmp_path):
    vit = tiny_vit().eval()
    fresh, for_bank = copy.deepcopy(vit), copy.deepcopy(vit)
    model = vpt.PromptedModel(vit, vpt.PromptConfig(method, **SMALL_IMAGES.get(method, {})), num_classes=5).eval()
    randomize(model.trainable_parameters())
    model.save_prompt(tmp_path / "p")
    loaded = vpt.PromptedModel.from_prompt_file(tmp_path / "p", backbone=fresh).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(IMAGES), model(IMAGES), rtol=1e-5, atol=1e-5)
    bank = vpt.PromptBank(for_bank)
    if method in BANKED:  # served beside the others, equal to the model alone
        bank.add_task("zoo", tmp_path / "p")
        torch.testing.assert_close(bank(IMAGES, ["zoo", "zoo"]), model(IMAGES).detach(), rtol=1e-5, atol=1e-5)
        return
    with pytest.raises(vpt.ConfigError, match=f"task 'zoo' .*prompt={method}.*run it alone"):
        bank.add_task("zoo", tmp_path / "p")


@pytest.mark.parametrize("method", ZOO)
def test_each_method_trains_a_step_through_vpt_train(method, tmp_path, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", [
        "vpt-train", f"prompt={method}", "logger=none", "trainer.epochs=1", "trainer.progress_bar=false",
        "trainer.cpu_threads=1", "data.train_size=16", f"hydra.run.dir={run}",
        *[f"prompt.{k}={v}" for k, v in SMALL_IMAGES.get(method, {}).items()]])
    vpt.tools.cli.train_main()
    results = json.loads((run / "results.json").read_text())
    assert results["method"] == method and results["status"] == "completed"
    manifest, tensors = vpt.read_prompt_file(run / "last")
    assert manifest["prompt"]["method"] == method and tensors


def test_bad_options_are_one_clear_error(tiny_vit_factory):
    with pytest.raises(vpt.ConfigError, match="prompt.rank must be an integer >= 1, got 0"):
        vpt.PromptConfig("lora", rank=0)
    with pytest.raises(vpt.ConfigError, match="prompt.targets"):
        vpt.PromptConfig("lora", targets=["q"])
    with pytest.raises(vpt.ConfigError, match="prompt.k=9 but .* has 3 blocks"):
        vpt.PromptedModel(tiny_vit(), vpt.PromptConfig("partial", k=9), num_classes=2)
    cnn = timm.create_model("resnet10t", pretrained=False, num_classes=0)
    for method in ("kv_prompts", "lora", "ssf", "adapter", "adaptformer"):
        with pytest.raises(vpt.ConfigError, match=f"prompt={method} .*timm ViT"):
            vpt.PromptedModel(copy.deepcopy(cnn), method, num_classes=2)
    vit = tiny_vit()
    vpt.PromptedModel(vit, "lora", num_classes=2)
    with pytest.raises(vpt.ConfigError, match="already carries the modules of prompt=lora"):
        vpt.PromptedModel(vit, "ssf", num_classes=2)


def test_modules_inside_the_frozen_backbone_train_while_the_backbone_stays_in_eval_mode():
    model = vpt.PromptedModel(tiny_vit(attn_drop_rate=0.1), vpt.PromptConfig("kv_prompts", dropout=0.5), num_classes=2)
    model.train()
    attn = model.backbone.blocks[0].attn
    assert attn.training and attn.dropout.training and not attn.attn.training and not model.backbone.blocks[0].training
    model.eval()
    assert not attn.dropout.training
    lora = vpt.PromptedModel(tiny_vit(), vpt.PromptConfig("lora", dropout=0.2), num_classes=2).train()
    qkv = lora.backbone.blocks[0].attn.qkv
    assert qkv.lora_dropout["default"].training and not qkv.base_layer.training


def test_sidetune_side_weights_load_through_the_checked_reader(tmp_path):
    """prompt.side_weights is read like any weights file: safetensors (no pickle), one error for a missing file."""
    from safetensors.torch import save_file

    from vpt.backbones.weights import WeightsFileError
    from vpt.methods.vpt_baselines import SideNetwork

    source = SideNetwork("conv", 16, None)
    path = tmp_path / "side.safetensors"
    save_file({k: v.contiguous() for k, v in source.net.state_dict().items()}, str(path))
    loaded = SideNetwork("conv", 16, str(path))
    for name, tensor in source.net.state_dict().items():
        assert torch.equal(loaded.net.state_dict()[name], tensor), name
    with pytest.raises(WeightsFileError, match="does not exist"):
        SideNetwork("conv", 16, str(tmp_path / "missing.safetensors"))
