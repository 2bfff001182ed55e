"""Weights given by path: read without running code from the file; refused when they do not fit the model."""
import pickle
import zipfile

import numpy as np
import pytest
import timm
import torch

from vpt.backbones.weights import (WeightsFileError, WeightsMismatchError, check_state_dict, load_checked,
                                   read_weights_file)
from vpt.errors import VptError, WeightsUnavailableError

from conftest import tiny_vit


class WritesMarker:
    """A pickle payload: unpickling it calls open(marker, "w"), i.e. runs code from the file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_the_crafted_payload_would_run_code_if_unpickled(tmp_path):
    """Proves the next test can fail: plain unpickling of the payload creates the marker."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(WritesMarker(marker))).close()
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("suffix", [".pth", ".pt", ".bin", ".ckpt"])
@pytest.mark.parametrize("layout", ["torch.save", "raw pickle"])
def test_crafted_pickle_payload_never_executes(tmp_path, suffix, layout):
    marker, path = tmp_path / "ran", tmp_path / f"evil{suffix}"
    payload = {"state_dict": {"w": torch.zeros(2), "x": WritesMarker(marker)}}
    if layout == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(WeightsFileError) as info:
        read_weights_file(path)
    assert not marker.exists()
    assert str(path) in str(info.value) and "safetensors.torch.save_file" in str(info.value)
    if layout == "torch.save":  # torch names the class it refused: say why vpt will not read the file
        assert "would run code from the file" in str(info.value)


def test_torch_containers_and_wrapper_prefixes_are_unwrapped(tmp_path):
    weights = {"module.blocks.0.w": torch.ones(2), "module.norm.b": torch.zeros(3)}
    torch.save({"epoch": 5, "model": weights, "optimizer": {"lr": 0.1}}, tmp_path / "ckpt.pth")
    loaded = read_weights_file(tmp_path / "ckpt.pth")
    assert sorted(loaded) == ["blocks.0.w", "norm.b"] and torch.equal(loaded["blocks.0.w"], torch.ones(2))


def test_file_without_tensors_is_refused(tmp_path):
    torch.save({"epoch": 5, "lr": 0.1}, tmp_path / "notes.pt")
    with pytest.raises(WeightsFileError, match="holds no state dict"):
        read_weights_file(tmp_path / "notes.pt")


def test_truncated_safetensors_is_a_clear_error(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"w": torch.randn(64, 64)}, str(path))
    path.write_bytes(path.read_bytes()[:4000])
    with pytest.raises(WeightsFileError) as info:
        read_weights_file(path)
    assert isinstance(info.value, VptError) and isinstance(info.value, WeightsUnavailableError)
    assert str(path) in str(info.value) and "truncated, corrupt" in str(info.value)


def test_truncated_torch_file_is_a_clear_error(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"w": torch.randn(64, 64)}, path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(WeightsFileError, match="truncated, corrupt or not a torch file"):
        read_weights_file(path)


def test_garbage_torch_file_is_called_corrupt_not_unsafe(tmp_path):
    (tmp_path / "bad.pth").write_bytes(b"not a pickle")
    with pytest.raises(WeightsUnavailableError, match=r"bad\.pth' is truncated, corrupt or not a torch file"):
        read_weights_file(tmp_path / "bad.pth")


def test_npz_is_read_as_arrays_and_object_arrays_are_refused(tmp_path):
    np.savez(tmp_path / "ok.npz", **{"embedding/kernel": np.ones((2, 3), np.float32)})
    arrays = read_weights_file(tmp_path / "ok.npz")
    assert list(arrays) == ["embedding/kernel"] and arrays["embedding/kernel"].shape == (2, 3)
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(WeightsFileError, match="object arrays"):
        read_weights_file(tmp_path / "obj.npz")
    (tmp_path / "cut.npz").write_bytes((tmp_path / "ok.npz").read_bytes()[:60])
    with pytest.raises(WeightsFileError, match="truncated"):
        read_weights_file(tmp_path / "cut.npz")


def test_missing_file_and_unknown_suffix_name_the_fix(tmp_path):
    with pytest.raises(WeightsFileError, match="does not exist"):
        read_weights_file(tmp_path / "nope.safetensors")
    (tmp_path / "w.h5").write_bytes(b"x")
    with pytest.raises(WeightsFileError, match=r"unknown suffix '\.h5'.*\.safetensors"):
        read_weights_file(tmp_path / "w.h5")


# ---- fit checks ------------------------------------------------------------------------------------------
def _save(state, path):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def test_resnet_weights_given_to_a_vit_are_refused_with_counts(tmp_path):
    resnet = timm.create_model("resnet10t", num_classes=0)
    path = _save(resnet.state_dict(), tmp_path / "resnet.safetensors")
    model = tiny_vit()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected = len(model.state_dict())  # no head: num_classes=0
    for allow_partial in (False, True):
        with pytest.raises(WeightsMismatchError) as info:
            load_checked(model, path, allow_partial=allow_partial)
        message = str(info.value)
        assert str(path) in message and f"0 of {expected} keys match" in message
        assert "backbone name" in message and "cls_token" in message
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())  # nothing loaded


def test_vit_weights_without_classifier_load(tmp_path):
    source = tiny_vit(num_classes=10)
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("head.")}
    path = _save(state, tmp_path / "vit.safetensors")
    model = tiny_vit()
    report = load_checked(model, path)
    assert report["matched"] == report["expected"] == len(state) and report["missing"] == []
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_classifier_of_another_size_is_ignored(tmp_path):
    source = tiny_vit(num_classes=10)
    path = _save(source.state_dict(), tmp_path / "vit.safetensors")
    model = tiny_vit(num_classes=3)
    report = load_checked(model, path)
    assert report["ignored"] == ["head.bias", "head.weight"] and report["mismatched"] == []
    assert model.head.weight.shape == (3, 48)  # vpt's own head is untouched


def test_partial_file_needs_allow_partial_and_reports_what_is_missing(tmp_path):
    source = tiny_vit()
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("blocks.3.")}
    path = _save(state, tmp_path / "partial.safetensors")
    model = tiny_vit()
    missing = sorted(k for k in model.state_dict() if k.startswith("blocks.3."))
    with pytest.raises(WeightsMismatchError) as info:
        load_checked(model, path)
    message = str(info.value)
    assert f"{len(state)} of {len(state) + len(missing)} keys match" in message
    assert f"{len(missing)} missing: blocks.3." in message and "backbone.allow_partial_weights=true" in message
    untouched = model.blocks[3].attn.qkv.weight.clone()
    report = load_checked(model, path, allow_partial=True)
    assert sorted(report["missing"]) == missing and report["matched"] == len(state)
    assert torch.equal(model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    assert torch.equal(model.blocks[3].attn.qkv.weight, untouched)


def test_shape_mismatch_is_refused_even_when_partial(tmp_path):
    model = tiny_vit()
    state = dict(model.state_dict())
    state["blocks.0.mlp.fc1.weight"] = torch.zeros(7, 48)
    with pytest.raises(WeightsMismatchError, match=r"1 wrong shape: blocks\.0\.mlp\.fc1\.weight \(7, 48\) vs \(192, 48\)"):
        check_state_dict(model, state, "x.safetensors", allow_partial=True)


def test_timm_filter_resamples_position_embeddings(tmp_path):
    source = tiny_vit(img_size=32)
    path = _save(source.state_dict(), tmp_path / "vit32.safetensors")
    model = tiny_vit(img_size=48)  # 6x6 patches instead of 4x4
    report = load_checked(model, path)
    assert report["matched"] == report["expected"] and model.pos_embed.shape == (1, 37, 48)
    assert torch.equal(model.blocks[2].mlp.fc2.weight, source.blocks[2].mlp.fc2.weight)
    with pytest.raises(WeightsMismatchError, match="pos_embed"):
        load_checked(tiny_vit(img_size=48), path, filter_fn=None)


def test_npz_goes_through_the_models_own_reader(tmp_path):
    np.savez(tmp_path / "other.npz", **{"some/kernel": np.ones((2, 2), np.float32)})
    with pytest.raises(WeightsMismatchError) as info:
        load_checked(tiny_vit(), tmp_path / "other.npz")
    assert str(tmp_path / "other.npz") in str(info.value)
    with pytest.raises(WeightsFileError, match="only timm ViTs"):
        load_checked(torch.nn.Linear(2, 2), tmp_path / "other.npz")


def test_torch_zip_with_foreign_member_is_not_executed(tmp_path):
    """A torch zip whose data.pkl was swapped for a payload: still refused, marker never created."""
    marker, path = tmp_path / "ran", tmp_path / "swap.pth"
    torch.save({"w": torch.zeros(1)}, path)
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: archive.read(info.filename) for info in archive.infolist()}
    pkl = next(name for name in members if name.endswith("data.pkl"))
    members[pkl] = pickle.dumps({"w": WritesMarker(marker)}, protocol=2)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(WeightsFileError):
        read_weights_file(path)
    assert not marker.exists()
