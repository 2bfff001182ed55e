"""Prompt files on the Hugging Face Hub (vpt.hub), offline: local directories, a stubbed download and upload."""
import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

import vpt
from vpt import hub
from vpt.errors import PromptFileError, WeightsUnavailableError

HUB_FILES = {"prompt.safetensors", "prompt.json", "README.md"}
RESULTS = {"status": "completed", "method": "deep", "dataset": "digits", "seed": 3, "test_top1": 87.654,
           "val_top1": 81.25, "trainable_params": 531, "prompt": {"method": "deep"}}


def tiny_backbone():
    """The same random weights on every call (the fingerprint check needs the training backbone's weights)."""
    import timm

    torch.manual_seed(1234)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3,
                             num_classes=0)


@pytest.fixture
def trained():
    """A prompted model whose prompts and head differ from a fresh model's (as after training)."""
    torch.set_num_threads(1)
    model = vpt.PromptedModel(tiny_backbone(), prompt="deep", length=4, num_classes=3, class_names=["a", "b", "c"])
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for param in model.trainable_parameters():
            param.copy_(torch.randn(param.shape, generator=generator))
    return model.eval()


@pytest.fixture
def images():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def logits(model, images):
    with torch.no_grad():
        return model.eval()(images)


def test_save_pretrained_round_trip_gives_identical_logits(trained, images, tmp_path):
    directory = hub.save_pretrained(trained, tmp_path / "prompt", results=RESULTS)
    assert {p.name for p in directory.iterdir()} == HUB_FILES
    loaded = vpt.PromptedModel.from_pretrained(str(directory), backbone=tiny_backbone())
    assert torch.equal(logits(loaded, images), logits(trained, images))
    assert loaded.class_names == ["a", "b", "c"] and loaded.prompt_config.length == 4
    fresh = vpt.PromptedModel(tiny_backbone(), prompt="deep", length=4, num_classes=3)
    assert not torch.allclose(logits(fresh, images), logits(trained, images))  # the load is what makes them equal
    # the plain prompt-file API reads the same directory
    again = vpt.PromptedModel.from_prompt_file(directory, backbone=tiny_backbone())
    assert torch.equal(logits(again, images), logits(trained, images))


def test_model_card_names_backbone_method_and_metrics(trained, tmp_path):
    results_file = tmp_path / "results.json"
    results_file.write_text(json.dumps(RESULTS))
    directory = hub.save_pretrained(trained, tmp_path / "prompt", results=results_file, repo_id="someone/vpt-deep")
    card = ModelCard.load(directory / "README.md")
    assert card.data.library_name == "vpt"
    assert {"vpt", "vpt-deep"} <= set(card.data.tags)
    assert card.data.pipeline_tag == "image-classification"
    text = card.text
    assert "`vit_tiny_patch16_224`" in text and "method: `deep`" in text and "length: `4`" in text
    assert "| test_top1 | 87.65 |" in text and "| val_top1 | 81.25 |" in text and "| dataset | digits |" in text
    assert "3 classes (a, b, c)" in text
    assert "size:" not in text  # a pixel-prompt setting, unused by deep prompts
    assert 'vpt.PromptedModel.from_pretrained("someone/vpt-deep", backbone=backbone)' in text
    assert "backbone = my_backbone" in text  # built in code: the card says to pass the same instance
    assert "- head: linear (trained), 3 classes" in text and "train_head" not in text
    manifest = json.loads((directory / "prompt.json").read_text())
    assert manifest["backbone"]["fingerprint"] in text


def test_model_card_describes_recorded_weights():
    assert hub.describe_weights({"name": "vit_small_patch16_224.augreg_in21k", "pretrained": "True", "kwargs": {}}) \
        == "pretrained tag `augreg_in21k`"
    assert hub.describe_weights({"name": "open_clip:ViT-B-32", "pretrained": "openai", "kwargs": {}}) \
        == "pretrained tag `openai`"
    assert hub.describe_weights({"name": "vit_tiny_patch16_224", "pretrained": "/home/me/w/digits_vit.safetensors",
                                 "kwargs": {}}) == "a local weights file `digits_vit.safetensors`"  # no local path
    assert hub.describe_weights({"name": "vit_s", "pretrained": False, "kwargs": {}}).startswith("random init")


def test_model_card_of_a_zero_shot_head_says_frozen_and_builds_the_recorded_backbone():
    manifest = {"backbone": {"name": "open_clip:ViT-B-32", "fingerprint": "f" * 64,
                             "create_args": {"name": "open_clip:ViT-B-32", "pretrained": "openai", "kwargs": {},
                                             "image_size": None}},
                "prompt": {"method": "pad", "size": 30, "train_head": True, "length": 10},
                "head": {"kind": "zero_shot", "num_classes": 2}, "class_names": ["cat", "dog"],
                "tensors": {"prompt.pad_up": [1, 3, 30, 224]}}  # no head.* tensors: the text head stayed frozen
    text = hub.build_model_card(manifest, None, "someone/clip-pad").text
    assert "- head: zero_shot (frozen), 2 classes (cat, dog)" in text and "train_head" not in text
    assert "backbone = vpt.create_backbone(\"open_clip:ViT-B-32\", pretrained='openai')" in text
    assert 'vpt.PromptedModel.from_pretrained("someone/clip-pad", backbone=backbone)' in text
    local = {**manifest["backbone"]["create_args"], "name": "vit_tiny_patch16_224", "pretrained": "digits_vit.safetensors",
             "pretrained_sha256": "a" * 64, "image_size": 16, "kwargs": {"patch_size": 4}}
    assert hub._backbone_snippet(local) == [
        "backbone = vpt.create_backbone(\"vit_tiny_patch16_224\", pretrained='path/to/digits_vit.safetensors', "
        "image_size=16, patch_size=4)  # the frozen encoder it was tuned on"]


def test_model_card_without_results_uses_checkpoint_metrics(trained, tmp_path):
    directory = hub.save_pretrained(trained, tmp_path / "best", epoch=5, dataset="digits",
                                    metrics={"val_top1": 75.0, "train_loss": 0.3})
    text = (directory / "README.md").read_text()
    assert "checkpoint of epoch 5" in text and "| val_top1 | 75 |" in text and "train_loss" not in text


def test_repo_id_is_fetched_with_snapshot_download(trained, images, tmp_path, monkeypatch):
    directory = hub.save_pretrained(trained, tmp_path / "snapshot")
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append({"repo_id": repo_id, **kwargs})
        return str(directory)

    monkeypatch.setattr(hub, "snapshot_download", fake_snapshot_download)
    loaded = vpt.PromptedModel.from_pretrained("someone/vpt-deep", backbone=tiny_backbone(), revision="v1")
    assert torch.equal(logits(loaded, images), logits(trained, images))
    assert len(calls) == 1 and calls[0]["repo_id"] == "someone/vpt-deep" and calls[0]["revision"] == "v1"
    assert set(calls[0]["allow_patterns"]) == HUB_FILES


def test_repo_without_prompt_files_is_named(tmp_path, monkeypatch):
    (tmp_path / "README.md").write_text("# not a prompt\n")
    monkeypatch.setattr(hub, "snapshot_download", lambda repo_id, **kwargs: str(tmp_path))
    with pytest.raises(PromptFileError, match="'someone/other-model' holds no prompt.safetensors"):
        vpt.PromptedModel.from_pretrained("someone/other-model")


def test_offline_hub_miss_is_one_clear_error(tmp_path):
    with pytest.raises(WeightsUnavailableError) as caught:
        vpt.PromptedModel.from_pretrained("someone/not-cached", cache_dir=tmp_path / "empty-cache")
    message = str(caught.value)
    assert "'someone/not-cached'" in message and "HF_HUB_OFFLINE" in message
    assert "pass its path" in message and "prompt.safetensors" in message


def test_download_failure_names_repo_and_local_alternative(monkeypatch):
    def unreachable(repo_id, **kwargs):
        raise ConnectionError("[Errno 101] Network is unreachable")  # an OSError, as the network layer raises

    monkeypatch.setattr(hub, "snapshot_download", unreachable)
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", False)
    import vpt.online
    monkeypatch.setattr(vpt.online, "_reachability", {hub.constants.ENDPOINT: True})  # the endpoint answered the probe
    with pytest.raises(WeightsUnavailableError, match=r"could not download 'someone/vpt-deep' .*Network is unreachable"
                                                      r".*pass its path"):
        vpt.PromptedModel.from_pretrained("someone/vpt-deep")


def test_missing_local_path_is_not_sent_to_the_hub(tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "snapshot_download", lambda *a, **k: pytest.fail("a path must not reach the hub"))
    with pytest.raises(PromptFileError, match="no prompt directory .*missing/best"):
        vpt.PromptedModel.from_pretrained(str(tmp_path / "missing" / "best"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PromptFileError, match="no prompt directory"):
        vpt.PromptedModel.from_pretrained("./best")


class FakeHfApi:
    """Records what push_to_hub asks of huggingface_hub.HfApi; the uploaded folder is listed while it exists."""
    instances = []

    def __init__(self, token=None):
        self.token, self.calls = token, []
        FakeHfApi.instances.append(self)

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        folder = Path(folder_path)
        files = {p.name: p.read_bytes() for p in folder.iterdir()}
        self.calls.append(("upload_folder", repo_id, {**kwargs, "files": files}))
        return "commit-info"


def test_push_to_hub_uploads_exactly_the_prompt_files(trained, monkeypatch):
    FakeHfApi.instances.clear()
    monkeypatch.setattr(hub, "HfApi", FakeHfApi)
    commit = hub.push_to_hub(trained, "someone/vpt-deep", private=True, results=RESULTS, token="hf_test",
                             commit_message="deep prompt, digits")
    assert commit == "commit-info"
    (api,) = FakeHfApi.instances
    assert api.token == "hf_test"
    (create, upload) = api.calls
    assert create[0] == "create_repo" and create[1] == "someone/vpt-deep"
    assert create[2]["private"] is True and create[2]["exist_ok"] is True
    assert upload[0] == "upload_folder" and upload[1] == "someone/vpt-deep"
    assert upload[2]["commit_message"] == "deep prompt, digits"
    assert set(upload[2]["files"]) == HUB_FILES
    card = upload[2]["files"]["README.md"].decode()
    assert 'from_pretrained("someone/vpt-deep"' in card and "| test_top1 | 87.65 |" in card


def test_push_failure_says_how_to_log_in(trained, monkeypatch):
    class NoLogin(FakeHfApi):
        def create_repo(self, repo_id, **kwargs):
            raise PermissionError("401 Unauthorized")

    monkeypatch.setattr(hub, "HfApi", NoLogin)
    with pytest.raises(hub.HubUploadError, match="'someone/vpt-deep'.*401 Unauthorized.*hf auth login"):
        hub.push_to_hub(trained, "someone/vpt-deep")
