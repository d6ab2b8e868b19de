"""Image decoding at the data boundary: every image becomes RGB here, once."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from xcos.data.limits import DEFAULT_MAX_PIXELS, check_pixels
from xcos.errors import (
    BadImageError,
    DataError,
    ImageTooLargeError,
    UnalignedImageError,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")


#: The EXIF orientations that swap width and height (rotations by 90 or 270 degrees).
_TRANSPOSED = (5, 6, 7, 8)
_ORIENTATION_TAG = 0x0112


def unaligned_message(path: str | Path, found: tuple[int, int], size: int, fix: str = "") -> str:
    """``image 'p' is 92x112 pixels; expected an aligned 112x112 face ...`` plus ``fix``."""
    width, height = found
    return (
        f"image {str(path)!r} is {width}x{height} pixels; expected an aligned {size}x{size} face "
        "(images are never resized silently: a resized photo is not an aligned face)"
        + (f". {fix}" if fix else "")
    )


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file as ``read_rgb`` decodes it (EXIF rotation applied),
    from its header (PIL decodes a PNG to look for EXIF after its pixel data)."""
    with open_image(path, str(path), max_pixels=None) as image:
        width, height = image.size
        if image.getexif().get(_ORIENTATION_TAG, 1) in _TRANSPOSED:
            return height, width
        return width, height


def array_to_rgb(array: np.ndarray, name: str) -> np.ndarray:
    """A uint8 array [H, W], [H, W, 1], [H, W, 3] (taken as RGB) or [H, W, 4] (RGBA, alpha
    dropped) as RGB uint8 [H, W, 3]; any other dtype or shape raises ``DataError`` naming
    ``name``."""
    if array.dtype != np.uint8:
        raise DataError(f"{name}: expected a uint8 image array, got dtype {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise DataError(
            f"{name}: expected an array [H, W], [H, W, 1], [H, W, 3] (RGB) or [H, W, 4] (RGBA), "
            f"got shape {array.shape}"
        )
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array[:, :, :3])


def read_face(path: str | Path, size: int, fix: str = "") -> np.ndarray:
    """An aligned face file as RGB uint8 [size, size, 3]; any other size raises
    ``UnalignedImageError`` naming the file, its size, ``size`` and ``fix`` (how to align it).
    """
    face = read_rgb(path)
    if face.shape[:2] != (size, size):
        found = (face.shape[1], face.shape[0])
        raise UnalignedImageError(unaligned_message(path, found, size, fix))
    return face


def read_rgb(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode ``path`` to an RGB uint8 array [H, W, 3] (EXIF rotation applied), at its own
    size: nothing in xcos resizes a face (``read_face`` refuses one of the wrong size). An
    image of more than ``max_pixels`` pixels (None: no limit) raises ``ImageTooLargeError``
    before it is decoded."""
    with open_image(path, str(path), max_pixels) as image:
        return _decode(image, str(path))


def decode_rgb(data: bytes, name: str, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """``read_rgb`` of an encoded image held in memory (an upload); errors name ``name``."""
    with open_image(io.BytesIO(data), name, max_pixels) as image:
        return _decode(image, name)


@contextmanager
def open_image(
    source: str | Path | io.BytesIO, name: str, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> Iterator[Image.Image]:
    """``PIL.Image.open`` with xcos's errors: its header only is read, and an image of more
    than ``max_pixels`` pixels raises ``ImageTooLargeError`` naming ``name`` (nothing is
    decoded); a missing or undecodable file raises ``BadImageError``."""
    try:
        with warnings.catch_warnings():
            # PIL warns above its own limit (89 MP); ours is checked right below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(source)
    except FileNotFoundError:
        raise BadImageError(f"image {name!r}: no such file") from None
    except Image.DecompressionBombError as err:  # over twice PIL's limit: refused at open
        raise ImageTooLargeError(f"image {name!r} is too large to decode: {err}") from err
    except UnidentifiedImageError as err:  # its message shows the source object: not useful
        raise BadImageError(f"cannot decode image {name!r}: not an image file") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise BadImageError(f"cannot decode image {name!r}: {err}") from err
    with image:
        check_pixels(image.size, name, max_pixels)
        yield image


def _decode(image: Image.Image, name: str) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = ImageOps.exif_transpose(image)
            return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, SyntaxError, ValueError) as err:  # truncated or corrupt data
        raise BadImageError(f"cannot decode image {name!r}: {err}") from err


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """RGB uint8 [H, W, 3] -> float [3, H, W] normalised as (x / 255 - 0.5) / 0.5."""
    tensor = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float()
    return tensor.div_(127.5).sub_(1.0)


def to_image(tensor: torch.Tensor) -> np.ndarray:
    """Inverse of ``to_tensor``: [3, H, W] normalised -> RGB uint8 [H, W, 3]."""
    array = (tensor.detach().float().cpu() + 1.0) * 127.5
    return array.clamp(0, 255).round().byte().permute(1, 2, 0).numpy()
