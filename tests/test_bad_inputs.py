"""Bad inputs, as a new user gives them: each ends in one message that names the fix, and no earlier result changes.

The finished runs are the digits quickstart and a tiny ImageFolder run (1 epoch, 1 batch, 1 thread); their
results, metrics, best/, last/ and resume state are compared byte for byte after each refused input.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import hashlib
import json
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_module
from PIL import Image
from safetensors.torch import load_file, save_file

import vpt.tools.cli

vpt.tools.cli.register_resolvers()
from conftest import tiny_vit  # noqa: E402
from vpt import PromptBank, PromptedModel  # noqa: E402
from vpt.backbones import create_backbone  # noqa: E402
from vpt.backbones.portable import RecordedWeightsNotFoundError  # noqa: E402
from vpt.data import build_data  # noqa: E402
from vpt.data.sources import BadImageError  # noqa: E402
from vpt.engine import train  # noqa: E402
from vpt.errors import ConfigError, PromptFileError  # noqa: E402
from vpt.files import ResumeStateError  # noqa: E402
from vpt.prompt_file import read_prompt_file  # noqa: E402

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0"}
FAST = ["trainer.epochs=1", "trainer.limit_train_batches=1", "trainer.cpu_threads=1", "trainer.batch_size=16",
        "trainer.progress_bar=false", "prompt.length=2", "logger=none"]
QUICK = [*FAST, "data.train_size=32"]  # the digits quickstart
RESULT_FILES = ("results.json", "metrics.jsonl", "metrics.csv", "resume.safetensors", "resume.json", "config.yaml",
                "best/prompt.safetensors", "best/prompt.json", "last/prompt.safetensors", "last/prompt.json")
TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3)


def compose_train(overrides):
    with initialize_config_module("vpt.configs", version_base="1.3"):
        return compose("train", overrides=list(overrides))


def snapshot(run_dir, names=RESULT_FILES):
    return {name: (Path(run_dir) / name).read_bytes() for name in names}


def assert_unchanged(run_dir, before):
    assert snapshot(run_dir, tuple(before)) == before
    assert not list(Path(run_dir).glob("replaced-*")), "earlier results were moved aside"


def one_line_error(result, program="vpt-train"):
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith(f"{program}: error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr + result.stdout, result.stderr
    return errors[0]


def vpt_command(command, *args, cwd):
    return subprocess.run([str(BIN / command), *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("finished")
    train(compose_train([*QUICK, f"output_dir={run}"]))
    return run


def write_image_folder(root, classes=("a", "b"), per_class=5):
    generator = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = generator.integers(0, 255, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def truncate(path, keep=0.5):
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * keep)])


@pytest.fixture
def folder_run(tmp_path):
    """A finished run on a tiny ImageFolder dataset (its data root, its run dir)."""
    root = write_image_folder(tmp_path / "images")
    run = tmp_path / "run"
    train(compose_train([*FAST, "data=imagefolder", f"data.root={root}", "data.val_fraction=0", f"output_dir={run}"]))
    return root, run


# ---- item 5: one message before training -------------------------------------------------------------------
@pytest.mark.parametrize("key, value, words", [
    ("trainer.epochs", "2.5", ["trainer.epochs must be a whole number >= 1", "got 2.5", "trainer.epochs=3"]),
    ("trainer.epochs", "ten", ["trainer.epochs must be a whole number", "'ten'", "trainer.epochs=1"]),
    ("trainer.batch_size", "0", ["trainer.batch_size must be a whole number >= 1", "got 0", "trainer.batch_size=1"]),
    ("trainer.batch_size", "-4", ["trainer.batch_size must be a whole number >= 1", "got -4"]),
    ("trainer.batch_size", "8.5", ["trainer.batch_size must be a whole number", "got 8.5", "trainer.batch_size=9"]),
])
def test_bad_trainer_numbers_are_refused_before_the_run_dir_is_touched(finished_run, key, value, words):
    before = snapshot(finished_run)
    with pytest.raises(ConfigError) as caught:  # overwrite=true would move the results aside: the check comes first
        train(compose_train([*QUICK, f"{key}={value}", "trainer.overwrite=true", f"output_dir={finished_run}"]))
    for word in words:
        assert word in str(caught.value)
    assert_unchanged(finished_run, before)


def test_negative_base_lr_names_the_value_the_user_gave(finished_run):
    before = snapshot(finished_run)
    with pytest.raises(ConfigError) as caught:
        train(compose_train([*QUICK, "optim.base_lr=-0.1", "trainer.overwrite=true", f"output_dir={finished_run}"]))
    message = str(caught.value)
    assert "optim.base_lr=-0.1 is negative" in message and "optim.base_lr=0.1" in message
    assert str(-0.1 * 16 / 256) not in message  # not the batch-scaled lr torch would have named
    assert_unchanged(finished_run, before)


def test_bad_config_value_is_one_line_from_the_command_line(finished_run, tmp_path):
    before = snapshot(finished_run)
    result = vpt_command("vpt-train", *QUICK, "trainer.epochs=ten", f"hydra.run.dir={finished_run}", cwd=tmp_path)
    assert "trainer.epochs must be a whole number" in one_line_error(result)
    assert_unchanged(finished_run, before)


def test_truncated_resume_state_is_one_line_from_the_command_line(finished_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(finished_run, run)
    truncate(run / "resume.safetensors")
    before = snapshot(run, tuple(n for n in RESULT_FILES if n != "config.yaml"))  # rewritten as the run starts
    result = vpt_command("vpt-train", *QUICK, "trainer.resume=true", f"hydra.run.dir={run}", cwd=tmp_path)
    line = one_line_error(result)
    assert "resume.safetensors" in line and "truncated or corrupt" in line and "delete it to restart" in line
    assert_unchanged(run, before)


def test_truncated_resume_json_names_the_file(finished_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(finished_run, run)
    truncate(run / "resume.json")
    before = snapshot(run, tuple(n for n in RESULT_FILES if n != "config.yaml"))
    with pytest.raises(ResumeStateError, match=r"resume\.json.*truncated or not JSON"):
        train(compose_train([*QUICK, "trainer.resume=true", f"output_dir={run}"]))
    assert_unchanged(run, before)


def test_truncated_image_is_named_before_training(folder_run):
    root, run = folder_run
    truncate(root / "b" / "3.png", keep=0.3)
    before = snapshot(run)
    with pytest.raises(BadImageError) as caught:  # cached data: decoded while the trainer is built
        train(compose_train([*FAST, "data=imagefolder", f"data.root={root}", "data.val_fraction=0",
                             "trainer.resume=true", f"output_dir={run}"]))
    message = str(caught.value)
    assert str(root / "b" / "3.png") in message and "data.skip_bad_images=true" in message
    assert_unchanged(run, before)


def test_skip_bad_images_trains_on_the_rest_with_a_count(folder_run, tmp_path, caplog):
    root, _ = folder_run
    truncate(root / "a" / "1.png", keep=0.3)
    results = train(compose_train([*FAST, "data=imagefolder", f"data.root={root}", "data.val_fraction=0",
                                   "data.skip_bad_images=true", f"output_dir={tmp_path / 'skipping'}"]))
    assert results["train_size"] == 9  # 10 images, 1 unreadable
    warnings = [r.getMessage() for r in caplog.records if "skip_bad_images" in r.getMessage()]
    assert len(warnings) == 1 and "skipped 1 unreadable image(s) of 10" in warnings[0]
    assert str(root / "a" / "1.png") in warnings[0]


def test_truncated_image_decoded_on_the_fly_is_named_or_skipped(tmp_path, caplog):
    root = write_image_folder(tmp_path / "images")
    truncate(root / "a" / "2.png", keep=0.3)
    data_config = {"input_size": (3, 16, 16), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    lazy = build_data({"name": "imagefolder", "root": str(root), "cache": False}, data_config)
    with pytest.raises(BadImageError, match=r"2\.png.*data\.skip_bad_images=true"):
        [lazy.train[i] for i in range(len(lazy.train))]
    with pytest.raises(BadImageError) as caught:  # from a DataLoader worker: the message, not the worker's traceback
        list(lazy.loaders(batch_size=4, num_workers=1)["train"])
    assert str(caught.value).startswith(f"cannot read image {str(root / 'a' / '2.png')!r}")
    assert "Traceback" not in str(caught.value)
    skipped = build_data({"name": "imagefolder", "root": str(root), "cache": False, "skip_bad_images": True},
                         data_config)
    assert len(skipped.train) == 9 and [skipped.train[i][1] for i in range(9)] == [0] * 4 + [1] * 5
    assert "skipped 1 unreadable image(s) of 10" in caplog.text


def test_empty_class_folder_is_refused_naming_it(folder_run):
    root, run = folder_run
    (root / "c").mkdir()
    (root / "c" / "notes.txt").write_text("not an image")
    before = snapshot(run)
    with pytest.raises(ConfigError) as caught:
        train(compose_train([*FAST, "data=imagefolder", f"data.root={root}", "data.val_fraction=0",
                             "trainer.resume=true", f"output_dir={run}"]))
    message = str(caught.value)
    assert repr(str(root / "c")) in message and "hold no images" in message and "remove the folder" in message
    assert_unchanged(run, before)


@pytest.fixture
def tiny_model():
    return PromptedModel(tiny_vit(depth=2), "deep", num_classes=3, length=2).eval()


def test_vit_given_images_of_the_wrong_size_says_the_expected_shape(tiny_model):
    for call in (tiny_model, tiny_model.forward_features, tiny_model.forward_tokens):
        with pytest.raises(ConfigError) as caught:
            call(torch.zeros(2, 3, 30, 30))
        message = str(caught.value)
        assert "(batch, 3, 32, 32)" in message and "got shape (2, 3, 30, 30)" in message
        assert "backbone.image_size" in message
    with pytest.raises(ConfigError, match=r"images\[None\]"):
        tiny_model(torch.zeros(3, 32, 32))
    assert tiny_model(torch.zeros(2, 3, 32, 32)).shape == (2, 3)


def test_vit_given_uint8_images_says_to_normalise_to_float(tiny_model):
    with pytest.raises(ConfigError) as caught:
        tiny_model(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    message = str(caught.value)
    assert "dtype torch.uint8" in message and "float" in message and "mean" in message and "std" in message


@pytest.fixture
def bank():
    backbone = tiny_vit(depth=2)
    first = PromptedModel(backbone, "deep", num_classes=3, length=2)
    second = PromptedModel(backbone, "shallow", num_classes=4, length=3)
    with torch.no_grad():
        for model in (first, second):
            model.token_prompts.embeddings.normal_()
    bank = PromptBank(backbone)
    bank.add_task("a", first)
    bank.add_task("b", second)
    return bank


@pytest.mark.parametrize("tasks, words", [
    (["a", "b"], ["2 tasks for a batch of 3 images"]),
    (torch.tensor([0, 1, -1]), ["task index -1 is out of range", "2 tasks", "negative indices do not count"]),
    (torch.tensor([0, 1, 2]), ["task index 2 is out of range", "0..1"]),
    (torch.tensor([0.0, 1.0, 1.0]), ["1-d integer tensor", "torch.float32"]),
    ("a", ["one string", "['a'] * len(images)"]),
])
def test_bank_refuses_a_task_list_of_the_wrong_length_or_range(bank, tasks, words):
    images = torch.randn(3, 3, 32, 32)
    with pytest.raises(ConfigError) as caught:
        bank(images, tasks)
    for word in words:
        assert word in str(caught.value)


def test_bank_task_indices_and_names_agree_and_bad_images_are_refused(bank):
    images = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(bank(images, torch.tensor([1, 0, 1])), bank(images, ["b", "a", "b"]))
    with pytest.raises(ConfigError, match=r"PromptBank takes float images of shape \(batch, 3, 32, 32\)"):
        bank(torch.randn(3, 3, 16, 16), ["a", "a", "a"])


def _two_saves(tmp_path, second_backbone=None):
    """Prompt files a/ and b/ of two saves (b/ on ``second_backbone`` if given), and c/ = a's manifest + b's weights."""
    backbone = tiny_vit(depth=2)
    first = PromptedModel(backbone, "deep", num_classes=3, length=2)
    first.save_prompt(tmp_path / "a")
    second = PromptedModel(second_backbone or backbone, "deep", num_classes=3, length=2)
    with torch.no_grad():
        second.token_prompts.embeddings.add_(1.0)
    second.save_prompt(tmp_path / "b")
    (tmp_path / "c").mkdir()
    shutil.copy(tmp_path / "a" / "prompt.json", tmp_path / "c")
    shutil.copy(tmp_path / "b" / "prompt.safetensors", tmp_path / "c")
    return tmp_path / "c", second


def test_prompt_file_mixed_from_two_saves_is_named_as_such(tmp_path):
    mixed, _ = _two_saves(tmp_path)  # same shapes, same backbone: loaded silently before
    with pytest.raises(PromptFileError) as caught:
        read_prompt_file(mixed)
    message = str(caught.value)
    assert "come from different saves" in message and "save id" in message
    assert str(mixed / "prompt.json") in message and str(mixed / "prompt.safetensors") in message


def test_prompt_file_mixed_across_backbones_does_not_blame_the_backbone(tmp_path):
    other = tiny_vit(depth=2)  # another random init: other weights, same architecture
    mixed, second = _two_saves(tmp_path, second_backbone=other)
    for path in (tmp_path / "a", tmp_path / "b"):  # the pairs themselves are fine
        read_prompt_file(path)
    with pytest.raises(PromptFileError) as caught:
        second.load_prompt(mixed)  # loaded onto the backbone its weights were made on
    assert "come from different saves" in str(caught.value) and "was made for backbone" not in str(caught.value)


def test_prompt_file_of_an_older_vpt_without_save_id_still_loads(tmp_path):
    model = PromptedModel(tiny_vit(depth=2), "deep", num_classes=3, length=2)
    folder = model.save_prompt(tmp_path / "old")
    manifest = json.loads((folder / "prompt.json").read_text())
    del manifest["save_id"]
    (folder / "prompt.json").write_text(json.dumps(manifest))
    tensors = load_file(folder / "prompt.safetensors")
    save_file(tensors, folder / "prompt.safetensors", metadata={"format": manifest["format"],
                                                                 "fingerprint": manifest["backbone"]["fingerprint"]})
    model.load_prompt(folder)


def test_run_dir_given_as_prompt_file_says_to_pass_best(finished_run):
    with pytest.raises(PromptFileError, match=r"is a run dir: pass .*best"):
        read_prompt_file(finished_run)


# ---- item 6: portable manifests --------------------------------------------------------------------------
def test_quickstart_records_its_weights_by_name_and_sha256(finished_run):
    asset = Path(str(resources.files("vpt") / "assets" / "digits_vit.safetensors"))
    digest = hashlib.sha256(asset.read_bytes()).hexdigest()
    args = json.loads((finished_run / "best" / "prompt.json").read_text())["backbone"]["create_args"]
    assert (args["pretrained"], args["pretrained_sha256"]) == ("digits_vit.safetensors", digest)
    config = yaml.safe_load((finished_run / "config.yaml").read_text())
    assert (config["backbone"]["pretrained"], config["backbone"]["pretrained_sha256"]) == (args["pretrained"], digest)
    assert str(asset.parent) not in (finished_run / "config.yaml").read_text()


@pytest.fixture
def weights_project(tmp_path):
    """A prompt file in project/runs/r1/best trained on store/w.safetensors, and the model it was saved from."""
    torch.manual_seed(3)
    weights = tmp_path / "store" / "w.safetensors"
    weights.parent.mkdir()
    save_file(tiny_vit(**TINY_VIT).state_dict(), weights)
    model = PromptedModel("vit_tiny_patch16_224", "deep", num_classes=3, pretrained=str(weights),
                          backbone_kwargs=TINY_VIT, length=2).eval()
    best = model.save_prompt(tmp_path / "project" / "runs" / "r1" / "best")
    return weights, best, model


def test_moved_weights_file_is_found_by_name_and_digest(weights_project, tmp_path):
    weights, best, model = weights_project
    assert str(tmp_path) not in (best / "prompt.json").read_text()  # no path of this machine
    images = torch.randn(2, 3, 32, 32)
    for place in (tmp_path / "project", best):  # three levels above the prompt file, and next to it
        weights = Path(shutil.move(weights, place / "w.safetensors"))
        loaded = PromptedModel.from_prompt_file(best).eval()
        torch.testing.assert_close(loaded(images), model(images))


def test_missing_weights_file_says_which_file_and_digest_and_how_to_pass_it(weights_project, tmp_path):
    weights, best, model = weights_project
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    moved = tmp_path / "elsewhere" / "w.safetensors"
    moved.parent.mkdir()
    shutil.move(weights, moved)
    (best.parent / "w.safetensors").write_bytes(b"same name, other contents")
    with pytest.raises(RecordedWeightsNotFoundError) as caught:
        PromptedModel.from_prompt_file(best)
    message = str(caught.value)
    for words in ("'w.safetensors'", digest[:12], "vpt-eval pretrained=/path/to/w.safetensors",
                  "from_prompt_file(path, pretrained=", "other contents"):
        assert words in message
    images = torch.randn(2, 3, 32, 32)
    for given in (moved, moved.parent):  # the file, or a folder holding it
        loaded = PromptedModel.from_prompt_file(best, pretrained=str(given)).eval()
        torch.testing.assert_close(loaded(images), model(images))


def test_old_manifest_with_an_absolute_path_keeps_loading(weights_project):
    weights, best, model = weights_project
    manifest = json.loads((best / "prompt.json").read_text())
    args = manifest["backbone"]["create_args"]
    args["pretrained"] = str(weights)  # as vpt < 0.2 wrote it
    del args["pretrained_sha256"]
    (best / "prompt.json").write_text(json.dumps(manifest))
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(PromptedModel.from_prompt_file(best).eval()(images), model(images))
    shutil.move(weights, best / "w.safetensors")  # the recorded path is gone: found by name
    torch.testing.assert_close(PromptedModel.from_prompt_file(best).eval()(images), model(images))


def test_weights_digest_is_checked_not_just_the_name(weights_project):
    weights, best, _ = weights_project
    other = create_backbone("vit_tiny_patch16_224", pretrained=False, **TINY_VIT)
    weights.unlink()
    save_file(other.model.state_dict(), best / "w.safetensors")  # same name, other weights
    with pytest.raises(RecordedWeightsNotFoundError, match="other contents"):
        PromptedModel.from_prompt_file(best)
