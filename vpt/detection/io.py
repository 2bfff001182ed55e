"""Image files: PIL-based PNG reading and writing (files are written by :mod:`vpt.files`' atomic writer)."""
from __future__ import annotations

import io
from pathlib import Path

import torch
from torchvision.transforms.functional import pil_to_tensor


def read_rgb(path: str | Path) -> torch.Tensor:
    """uint8 (3, H, W) RGB pixels of an image file (PIL decodes; torchvision.io's decoders are deprecated)."""
    from PIL import Image

    with Image.open(path) as image:
        return pil_to_tensor(image.convert("RGB"))


def png_bytes(pixels: torch.Tensor) -> bytes:
    """PNG encoding of uint8 (3, H, W) pixels."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy()).save(buffer, format="PNG")
    return buffer.getvalue()

