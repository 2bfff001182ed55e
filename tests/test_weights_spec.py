"""backbone.pretrained read once (vpt.backbones.weights_spec): the accepted forms, the one error, and the places
that read it (factory, portable records, tune's weights file) agreeing because they all call parse_weights."""
from __future__ import annotations

from pathlib import Path

import pytest

from vpt import hub
from vpt.backbones import factory, portable, pypi_weights
from vpt.backbones.weights_spec import WeightsSpec, parse_weights
from vpt.errors import ConfigError
from vpt.tools.tune.records import weights_file


@pytest.mark.parametrize("value, expected", [
    (False, WeightsSpec("none")),
    (None, WeightsSpec("none")),
    ("false", WeightsSpec("none")),
    ("None", WeightsSpec("none")),
    ("", WeightsSpec("none")),
    (True, WeightsSpec("library")),
    ("true", WeightsSpec("library")),
    ("augreg_in21k", WeightsSpec("library", tag="augreg_in21k")),
    ("openai", WeightsSpec("library", tag="openai")),
    ("pypi:efficientnet_lite0_in1k", WeightsSpec("pypi", key="efficientnet_lite0_in1k")),
    ("weights.safetensors", WeightsSpec("file", path="weights.safetensors")),
    ("ckpt.pth", WeightsSpec("file", path="ckpt.pth")),
    ("dir/weights", WeightsSpec("file", path="dir/weights")),
    (Path("w.npz"), WeightsSpec("file", path="w.npz")),
])
def test_each_accepted_form_parses_to_its_kind(value, expected):
    assert parse_weights(value) == expected


def test_an_existing_file_without_a_weights_suffix_is_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "encoder").write_bytes(b"")
    assert parse_weights("encoder") == WeightsSpec("file", path="encoder")


def test_home_is_expanded_in_a_path():
    assert parse_weights("~/w.pth").path == str(Path("~/w.pth").expanduser())


def test_the_spec_gives_its_value_back():
    for value in (False, True, "augreg_in21k", "pypi:vit_s14_imgfocus", "a/b.pth"):
        assert parse_weights(parse_weights(value).value) == parse_weights(value)


@pytest.mark.parametrize("bad", [3, 1.5, ["a.pth"], {"path": "a.pth"}, "pypi:"])
def test_a_value_of_no_accepted_form_is_one_error_naming_the_forms(bad):
    with pytest.raises(ConfigError, match=r"accepted: true, false, a hub tag.*local weights file.*pypi:<key>"):
        parse_weights(bad)


def test_create_backbone_refuses_a_bad_value_with_the_same_error():
    with pytest.raises(ConfigError, match="accepted: true, false"):
        factory.create_backbone("vit_tiny_patch16_224", pretrained=7)


def test_the_readers_share_the_one_parse(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"weights")
    # the portable record: a file by name + digest, anything else as its value
    assert portable.weights_record(str(path))["pretrained"] == "w.safetensors"
    assert portable.weights_record("false") == {"pretrained": False}
    assert portable.weights_record("pypi:vit_s14_imgfocus") == {"pretrained": "pypi:vit_s14_imgfocus"}
    assert portable.weights_record(True) == {"pretrained": "True"}
    assert portable.is_weights_path(path) and not portable.is_weights_path("augreg_in21k")
    # a recorded hub tag or pypi key is rebuilt as recorded, a recorded file is looked for
    assert portable.locate_recorded_weights({"pretrained": "pypi:vit_s14_imgfocus"}) == "pypi:vit_s14_imgfocus"
    with pytest.raises(portable.RecordedWeightsNotFoundError):
        portable.locate_recorded_weights({"pretrained": str(tmp_path / "gone.pth")})
    # the model card's words
    assert hub.describe_weights({"name": "vit_s", "pretrained": "pypi:vit_s14_imgfocus"}).endswith(
        "PyPI package, `pypi:vit_s14_imgfocus`")
    assert hub.describe_weights({"name": "vit_s", "pretrained": "w.npz"}) == "a local weights file `w.npz`"
    # tune's weights file: only an existing file
    assert weights_file(str(path)) == path and weights_file("true") is None and weights_file(False) is None
    assert weights_file(str(tmp_path / "gone.pth")) is None


def test_no_module_keeps_a_parse_of_its_own():
    assert not hasattr(factory, "_looks_like_path") and not hasattr(pypi_weights, "is_pypi_weights")
    assert pypi_weights.PREFIX == "pypi:"
