"""Image and json files: atomic writes (a killed process leaves the previous file or none, never half of
one) and PIL-based PNG reading and writing."""
from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torchvision.transforms.functional import pil_to_tensor


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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


def write_json_atomic(path: str | Path, data: Any) -> Path:
    return write_bytes_atomic(path, (json.dumps(data) + "\n").encode())
