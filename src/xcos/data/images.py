"""Image decoding at the data boundary: every image becomes RGB here, once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")


class BadImageError(ValueError):
    """An image file cannot be decoded; the message names the file."""


def read_rgb(path: str | Path, size: int | None = None) -> np.ndarray:
    """Decode ``path`` to an RGB uint8 array [H, W, 3] (EXIF rotation applied).

    With ``size``, the image is resized to ``size`` x ``size`` when it differs.
    """
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            image = image.convert("RGB")
            if size is not None and image.size != (size, size):
                image = image.resize((size, size), Image.BILINEAR)
            return np.asarray(image, dtype=np.uint8).copy()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        raise BadImageError(f"cannot decode image {str(path)!r}: {err}") from err


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """RGB uint8 [H, W, 3] -> float [3, H, W] normalised as (x / 255 - 0.5) / 0.5."""
    tensor = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float()
    return tensor.div_(127.5).sub_(1.0)


def to_image(tensor: torch.Tensor) -> np.ndarray:
    """Inverse of ``to_tensor``: [3, H, W] normalised -> RGB uint8 [H, W, 3]."""
    array = (tensor.detach().float().cpu() + 1.0) * 127.5
    return array.clamp(0, 255).round().byte().permute(1, 2, 0).numpy()
