"""Re-create the quickstart backbone ``vpt/assets/digits_vit.safetensors``.

Runs the ``digits_pretrain`` experiment (a shrunk timm ViT trained from scratch, all parameters, on
scikit-learn digits 0-4) and copies the exported backbone weights into ``vpt/assets``:

    python experiments/pretrain_digits_vit.py                 # same as: vpt-train experiment=digits_pretrain
    python experiments/pretrain_digits_vit.py seed=1          # extra Hydra overrides

The quickstart (``vpt-train`` with no arguments) then prompt-tunes this frozen backbone on digits 5-9.
Prompt files record the weights' fingerprint, so prompt files made on an older asset no longer load.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hydra import compose, initialize_config_module

import vpt.tools.cli

vpt.tools.cli.register_resolvers()  # ${vpt_asset:...} and ${vpt_pixels:...} in the configs
from vpt.backbones import create_backbone
from vpt.engine import to_plain, train

ASSET = Path(__file__).resolve().parents[1] / "vpt" / "assets" / "digits_vit.safetensors"
MAX_ASSET_BYTES = 2 * 1024 * 1024


def main(overrides: list[str]) -> int:
    out = Path("outputs/digits_pretrain")
    exported = out / "digits_vit.safetensors"
    with initialize_config_module("vpt.configs", version_base="1.3"):
        cfg = compose("train", overrides=["experiment=digits_pretrain", f"output_dir={out}",
                                          f"trainer.export_backbone={exported}", *overrides])
    results = train(cfg)
    size = exported.stat().st_size
    if size > MAX_ASSET_BYTES:
        print(f"{exported} is {size} bytes, over the {MAX_ASSET_BYTES}-byte asset budget; shrink the model",
              file=sys.stderr)
        return 1
    ASSET.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(exported, ASSET)
    backbone = cfg.backbone
    kwargs = to_plain(backbone.kwargs)
    fingerprint = create_backbone(backbone.name, pretrained=str(ASSET), **kwargs).fingerprint()
    print(f"digits 0-4 test top-1 {results['test_top1']:.1f}%; wrote {ASSET} ({size / 1024:.0f} kB, "
          f"fingerprint {fingerprint[:12]})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
