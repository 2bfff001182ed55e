"""vpt-bench on a tiny ViT: every method and comparison present, numbers positive, table printed.

No timing assertions: this machine is shared and the model is tiny; the issue's targets are judged by
``experiments/bench_targets.py`` (tests/test_bench_targets.py) after ``experiments/bench_cpu.sh`` (ViT-S/16).
The tiny run itself is the ``bench_run`` fixture in conftest.py.
"""
import pytest

METHODS = ["linear", "shallow", "deep", "pad", "full"]
METHOD_KEYS = ["trainable_params", "prompt_file_bytes", "train_img_s", "infer_img_s", "step_forward_ratio",
               "peak_mem_bytes", "train_step_s", "forward_s"]


def test_every_method_has_positive_numbers(bench_run):
    _, results = bench_run
    assert list(results["methods"]) == METHODS
    for method, row in results["methods"].items():
        assert "error" not in row, row.get("error")
        for key in METHOD_KEYS:
            assert row[key] > 0, (method, key, row[key])
    rows = results["methods"]
    assert rows["linear"]["trainable_params"] < rows["deep"]["trainable_params"] < rows["full"]["trainable_params"]
    assert rows["full"]["trainable_params"] == rows["full"]["total_params"]
    assert rows["deep"]["prompt_file_bytes"] < rows["full"]["prompt_file_bytes"]


def test_yardstick_and_multitask_rows(bench_run):
    _, results = bench_run
    yard = results["yardstick"]
    assert "error" not in yard, yard.get("error")
    assert yard["speedup_vs_plain_fp32"] > 0 and yard["img_s"]["plain_fp32"] > 0
    multi = results["multitask"]
    assert "error" not in multi, multi.get("error")
    assert multi["tasks"] == 8 and multi["mixed_vs_single"] > 0
    assert multi["img_s"]["mixed"] > 0 and multi["img_s"]["single"] > 0
    assert results["config"]["backbone"] == "vit_tiny_patch16_224" and results["environment"]["torch"]


def test_data_pipeline_row(bench_run):
    stdout, results = bench_run
    pipe = results["pipeline"]
    assert "error" not in pipe, pipe.get("error")
    assert pipe["dataset_images"] == 16 and pipe["dataset_device_bytes"] == 16 * 3 * 32 * 32  # uint8 cache
    assert pipe["img_s"]["pipeline"] > 0 and pipe["img_s"]["on_device"] > 0 and pipe["pipeline_vs_on_device"] > 0
    assert "data pipeline" in stdout


def test_flops_and_mfu_for_every_method(bench_run):
    """The GPU benchmark reports model FLOPs utilisation from these counts (on by default on CUDA)."""
    stdout, results = bench_run
    rows = results["methods"]
    for method, row in rows.items():
        assert "flops_error" not in row, (method, row.get("flops_error"))
        assert row["forward_flops_per_image"] > 0 and row["train_flops_per_image"] > 0, method
        assert row["mfu"] == pytest.approx(row["train_flops_per_image"] * row["train_img_s"] / 0.5e12)
    # prompt keys add attention work; full fine-tuning adds weight gradients (about 3x its forward), frozen
    # backbones only input gradients
    assert rows["deep"]["forward_flops_per_image"] > rows["linear"]["forward_flops_per_image"]
    assert rows["full"]["train_flops_per_image"] > 2.5 * rows["full"]["forward_flops_per_image"]
    assert rows["deep"]["train_flops_per_image"] < rows["full"]["train_flops_per_image"]
    assert stdout.count("MFU") == len(METHODS)


def test_table_is_printed(bench_run):
    stdout, _ = bench_run
    assert "train img/s" in stdout and "step/fwd" in stdout
    for method in METHODS:
        assert any(line.startswith(method) for line in stdout.splitlines()), method
    assert "yardstick" in stdout and "multi-task" in stdout


def test_the_bench_reports_figures_and_judges_no_targets(bench_run):
    """Pass/fail against the project's targets lives in experiments/bench_targets.py, not in the library."""
    stdout, results = bench_run
    assert "targets" not in results
    assert not any(line.startswith("target ") for line in stdout.splitlines())
    assert "PASS" not in stdout and "FAIL" not in stdout


def test_table_from_a_hand_written_result():
    """Column layout, memory relative to full fine-tuning, a failed method and a skipped comparison."""
    from vpt.tools.bench import format_table

    row = {"trainable_params": 1234, "prompt_file_bytes": 5678, "train_img_s": 10.0, "infer_img_s": 20.0,
           "step_forward_ratio": 2.0, "peak_mem_bytes": 100 * 2**20}
    results = {"config": {"backbone": "b", "img_size": 32, "batch_size": 4, "precision": "fp32", "device": "cpu",
                          "warmup": 1, "steps": 2, "cpu_allocator": "retain"},
               "environment": {"torch_threads": 1},
               "methods": {"deep": row, "full": {**row, "peak_mem_bytes": 400 * 2**20},
                           "pad": {"error": "pad worker failed: boom\nValueError: bad size"}},
               "yardstick": {"skipped": "the plain yardstick needs a timm VisionTransformer, not X"}}
    lines = format_table(results).splitlines()
    assert lines[0] == ("vpt-bench  backbone=b  img=32  batch=4  precision=fp32  device=cpu  warmup=1  steps=2  "
                        "threads=1  cpu_allocator=retain")
    assert lines[1].split() == ["method", "trainable", "file", "bytes", "train", "img/s", "infer", "img/s",
                                "step/fwd", "peak", "RSS", "MB", "mem/full"]
    assert set(lines[2]) == {"-"} and len(lines[2]) == len(lines[1])
    assert lines[3].split() == ["deep", "1,234", "5,678", "10.00", "20.00", "2.00", "100", "0.25"]
    assert lines[4].split()[-1] == "1.00"
    assert lines[5] == "pad      ERROR: ValueError: bad size"
    assert lines[6] == "yardstick: the plain yardstick needs a timm VisionTransformer, not X"


def test_prompt_config_asks_the_method_registry():
    """A method registered later gets its setting from its kind (token: length, pixel: size), not from a list."""
    from vpt.tools.bench import prompt_config
    from vpt.methods import Method, register_method, unregister_method

    spec = {"prompt_length": 7, "pad_size": 3}
    assert prompt_config(spec, "deep") == {"method": "deep", "length": 7}
    assert prompt_config(spec, "pad") == {"method": "pad", "size": 3}
    assert prompt_config(spec, "full") == {"method": "full"}
    for kind, expected in (("token", {"length": 7}), ("pixel", {"size": 3}), ("baseline", {})):
        toy = type("ToyMethod", (Method,), {"name": "bench_toy", "kind": kind})()
        register_method(toy)
        try:
            assert prompt_config(spec, "bench_toy") == {"method": "bench_toy", **expected}
        finally:
            unregister_method("bench_toy")


def test_unknown_method_stops_before_any_measurement(tmp_path):
    from vpt.tools.bench import run
    from vpt.methods import method_names

    with pytest.raises(SystemExit, match=r"unknown method\(s\) \['nope'\]; valid: ") as err:
        run(["--methods", "deep,nope", "--out", str(tmp_path / "r.json")])
    assert str(err.value).endswith(", ".join(method_names()))
    assert not (tmp_path / "r.json").exists()


def test_no_grad_flops_of_every_method_equal_the_grad_mode_count():
    """FLOP counting of a no-grad forward freezes the parameters for the count (FlopCounterMode's module tracker
    fails on a no-grad view of a parameter that requires grad) and restores the flags; the count equals that of
    the same eval forward with gradients on (no backward runs there either)."""
    import torch

    import vpt
    from vpt.tools.bench import flops_per_image, parameters_frozen
    from conftest import tiny_vit

    for method in ("linear", "shallow", "deep", "pad", "bias", "full"):
        model = vpt.PromptedModel(tiny_vit(), vpt.PromptConfig(method=method, length=4, size=4), num_classes=7).eval()
        flags = [p.requires_grad for p in model.parameters()]
        x = torch.randn(2, 3, 32, 32)

        def no_grad_forward():
            with torch.no_grad():
                model(x)

        with parameters_frozen(model):
            assert not any(p.requires_grad for p in model.parameters())
            counted = flops_per_image(no_grad_forward, 2)
        assert [p.requires_grad for p in model.parameters()] == flags, method
        assert counted == flops_per_image(lambda: model(x), 2) > 0, method


def test_parameters_frozen_restores_the_flags_after_an_error():
    import torch

    from vpt.tools.bench import parameters_frozen

    layer = torch.nn.Linear(2, 2)
    layer.bias.requires_grad_(False)
    with pytest.raises(RuntimeError, match="inside"):
        with parameters_frozen(layer):
            raise RuntimeError("inside")
    assert layer.weight.requires_grad and not layer.bias.requires_grad


def test_pipeline_dataset_from_an_imagefolder(tmp_path):
    import torch
    from test_data import make_imagefolder

    from vpt.tools.bench import pipeline_dataset

    root = make_imagefolder(tmp_path / "folder", per_class={"train": 4, "test": 1})
    config = {"input_size": (3, 16, 16), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    dataset = pipeline_dataset({"pipeline_images": 6, "pipeline_data": str(root), "num_classes": 3}, config)
    assert len(dataset) == 6 and dataset.images.dtype == torch.uint8
    assert tuple(dataset.images.shape) == (6, 3, 16, 16) and dataset.augment == "flip_crop"


def test_plain_yardstick_is_vpt_deep():
    """The yardstick computes the same function as vpt's VPT-deep given the same prompts and head."""
    import torch

    import vpt
    from vpt.tools.bench import PlainTimmVPT

    model = vpt.PromptedModel(vpt.create_backbone("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, pretrained=False),
                              "deep", num_classes=10, length=5).eval()
    plain = PlainTimmVPT(model.backbone.model, 5, 10).eval()
    with torch.no_grad():
        plain.prompts.copy_(model.token_prompts.embeddings)
        plain.head.load_state_dict(model.head.state_dict())
        x = torch.randn(3, 3, 32, 32)
        assert (plain(x) - model(x)).abs().max().item() < 1e-5


def test_missing_pipeline_data_stops_before_any_measurement(tmp_path):
    from vpt.tools.bench import run

    with pytest.raises(SystemExit, match="is not a folder; pass an ImageFolder"):
        run(["--pipeline-images", "4", "--pipeline-data", str(tmp_path / "missing"), "--out", str(tmp_path / "r.json")])
    assert not (tmp_path / "r.json").exists()



def test_random_weights_are_said_once_not_once_per_worker(bench_run):
    lines = [line for line in bench_run.stderr.splitlines() if "random weights" in line]
    assert lines == ["[vpt-bench] random weights (pretrained=False): speed and memory do not depend on the weights"]


TINY_CLIP_KWARGS = ('{"embed_dim": 32, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, '
                    '"head_width": 32}, "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, '
                    '"layers": 2}}')


def _bench(tmp_path, *args):
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / "results.json"
    cmd = [sys.executable, "-m", "vpt.tools.bench", *args, "--img-size", "32", "--batch-size", "4", "--warmup", "1",
           "--steps", "2", "--num-classes", "5", "--tasks", "0", "--no-yardstick", "--threads", "1", "--timeout", "120",
           "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def _check_rows(stdout, results, methods):
    assert list(results["methods"]) == methods
    for method, row in results["methods"].items():
        assert "error" not in row, (method, row.get("error"))
        for key in METHOD_KEYS:
            assert row[key] > 0, (method, key, row[key])
        assert row["prompt"]["method"] == method
        assert any(line.split()[:1] == [method] for line in stdout.splitlines()), method


def test_clip_prompt_methods_on_an_open_clip_backbone(tmp_path):
    """CLIP methods get generated class names; the rows say where the text tower runs (CoCoOp: per image)."""
    stdout, results = _bench(tmp_path, "--backbone", "open_clip:ViT-B-32", "--backbone-kwargs", TINY_CLIP_KWARGS,
                             "--methods", "cocoop,maple")
    _check_rows(stdout, results, ["cocoop", "maple"])
    rows = results["methods"]
    assert "per image" in rows["cocoop"]["text_tower"] and "not per image" in rows["maple"]["text_tower"]
    assert rows["maple"]["prompt"]["depth"] == 2  # the official 9, clipped to the tiny towers
    assert "text tower: per image" in stdout


def test_zoo_methods_on_a_timm_vit(tmp_path):
    stdout, results = _bench(tmp_path, "--backbone", "vit_tiny_patch16_224", "--patch-size", "8", "--backbone-kwargs",
                             '{"depth": 2}', "--methods", "lora,sidetune")
    _check_rows(stdout, results, ["lora", "sidetune"])
    assert results["methods"]["sidetune"]["prompt"]["side"] == "conv"  # 32 px: AlexNet needs 63
    assert "text_tower" not in results["methods"]["lora"]
