"""InsightFace validation ``.bin`` files (lfw.bin, cfp_fp.bin, agedb_30.bin, ...) as a PairSet.

A ``.bin`` is a pickle of ``(images, issame)``: ``images`` holds 2N encoded images (JPEG or PNG
file bytes of aligned 112 x 112 faces) and ``issame`` N booleans; images 2i and 2i+1 form
pair i. InsightFace wrote the originals with Python 2 (images as ``str``), so they are read
with ``encoding="bytes"``.

A pickle can run arbitrary code while it loads, so the file goes through ``SafeUnpickler``,
which builds only plain data (bytes, str, numbers, bools, lists, tuples, numpy arrays) and
refuses every other global before calling it.
"""

from __future__ import annotations

import importlib
import io
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from xcos.data.folds import contiguous_folds
from xcos.data.pair_sets import PairSet
from xcos.errors import DataError, UnalignedImageError
from xcos.registry import PAIR_SETS

FOLDS = 10


def _latin1_bytes(text: object, encoding: object = "latin1") -> bytes:
    """``_codecs.encode`` as pickle uses it: Python 3 writes bytes as ``encode(str, 'latin1')``
    at protocols 0-2 (also inside numpy arrays); any other use is refused."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError(f"_codecs.encode refused for ({text!r:.40}, {encoding!r})")
    return text.encode("latin1")


def _numpy_function(module: str, name: str) -> Callable[..., Any]:
    # numpy 2 moved numpy.core to numpy._core; the installed one serves both spellings
    for package in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{package}.{module}"), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy has no {module}.{name}")


def _fresh(function: Callable[..., Any]) -> Callable[..., Any]:
    # pickle's BUILD opcode can set attributes (e.g. __defaults__) on any object it holds;
    # a throwaway wrapper per load keeps that from altering the real, shared function
    return lambda *args: function(*args)


def _allowed_globals() -> dict[tuple[str, str], Callable[..., Any]]:
    """The only globals a ``.bin`` may name: the pieces numpy pickles arrays and scalars with.

    Built per load, with fresh function wrappers (the numpy classes are immutable types).
    """
    allowed: dict[tuple[str, str], Callable[..., Any]] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _fresh(_latin1_bytes),
    }
    pieces = [
        ("multiarray", "_reconstruct"),  # arrays, protocols 0-4
        ("multiarray", "scalar"),  # numpy scalars such as np.bool_ issame flags
        ("numeric", "_frombuffer"),  # arrays, protocol 5
    ]
    for module, name in pieces:
        function = _fresh(_numpy_function(module, name))
        for package in ("numpy._core", "numpy.core"):
            allowed[(f"{package}.{module}", name)] = function
    return allowed


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals of ``_allowed_globals``.

    Anything else (``posix.system``, ``builtins.eval``, any class) raises ``DataError`` from
    ``find_class``, i.e. before the object could be called or constructed.
    """

    def __init__(self, file: io.BufferedIOBase, source: Path) -> None:
        super().__init__(file, encoding="bytes")
        self.source = source
        self.allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Callable[..., Any]:
        found = self.allowed.get((module, name))
        if found is None:
            raise DataError(
                f"{self.source}: refused to load global {module}.{name}: a .bin may hold only "
                "encoded images and issame flags (bytes, lists, bools, numpy arrays). Loading "
                "it could run code; do not use this file unless you trust its origin"
            )
        return found


def safe_load(path: Path) -> Any:
    """Unpickle ``path`` with ``SafeUnpickler``; malformed pickles raise ``DataError``."""
    try:
        with path.open("rb") as handle:
            return SafeUnpickler(handle, path).load()
    except DataError:
        raise
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
        OverflowError,
    ) as err:
        raise DataError(f"{path}: not a readable pickle ({type(err).__name__}: {err})") from None


@PAIR_SETS.register("insightface_bin")
def read_insightface_bin(path: str, name: str | None = None, image_size: int = 112) -> PairSet:
    """Read an InsightFace ``.bin`` and decode its faces into memory.

    Accepted variants: the container is a tuple or list ``(images, issame)``; ``images`` is a
    list, tuple or 1-D array of encoded images, each ``bytes`` or a 1-D uint8 array of the
    file bytes; ``issame`` is a list or 1-D array of bools (or 0/1 integers).

    Images are decoded with PIL, which yields RGB for the JPEGs InsightFace stored (decoded
    with mxnet's ``imdecode``, also RGB, in InsightFace's own evaluation). They are aligned
    faces (ArcFace's 112x112 template in InsightFace's sets) and are never resized: a face of
    another size than ``image_size`` is refused (``UnalignedImageError``), as a resized face
    is not a face aligned for another model.

    Returns:
        A ``PairSet`` (``name`` defaults to the file stem, e.g. ``agedb_30``) with ``images``
        a uint8 array [2N, 3, S, S], ``pairs`` [[0, 1], [2, 3], ...] int64 [N, 2] (a .bin
        repeats images rather than deduplicating them), ``labels`` int64 [N] and ``folds``
        int64 [N]: 10 contiguous folds (one per pair when N < 10).

    Raises:
        DataError: naming the file, for refused globals, a malformed pickle or structure,
            image and flag counts that disagree, or an image that cannot be decoded.
        UnalignedImageError: naming the file and image, for a face of another size.
    """
    bin_path = Path(path)
    if not bin_path.is_file():
        raise DataError(f"InsightFace .bin {str(bin_path)!r} does not exist")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise DataError(f"{bin_path}: image_size must be a positive integer, got {image_size!r}")
    encoded, labels = _split(safe_load(bin_path), bin_path)
    faces = np.empty((len(encoded), 3, image_size, image_size), dtype=np.uint8)
    for index, data in enumerate(encoded):
        faces[index] = _decode(data, index, image_size, bin_path)
    count = len(labels)
    return PairSet(
        name=name or bin_path.stem,
        images=faces,
        pairs=np.arange(2 * count, dtype=np.int64).reshape(count, 2),
        labels=labels,
        folds=contiguous_folds(count, min(FOLDS, count)).astype(np.int64),
    )


def _split(content: Any, source: Path) -> tuple[list[bytes], np.ndarray]:
    """(encoded images, labels int64 [N]) from the unpickled ``(images, issame)``."""
    if not isinstance(content, (tuple, list)) or len(content) != 2:
        raise DataError(
            f"{source}: expected a pickle of (list of encoded images, list of issame flags), "
            f"got {_describe(content)}"
        )
    encoded = [_image_bytes(item, i, source) for i, item in enumerate(_items(content[0], source))]
    labels = [_flag(item, i, source) for i, item in enumerate(_items(content[1], source))]
    if not labels:
        raise DataError(f"{source}: holds no pairs")
    if len(encoded) != 2 * len(labels):
        raise DataError(
            f"{source}: {len(encoded)} images but {len(labels)} issame flags; "
            f"a .bin needs exactly 2 images per flag ({2 * len(labels)})"
        )
    return encoded, np.asarray(labels, dtype=np.int64)


def _items(value: Any, source: Path) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, np.ndarray) and value.ndim == 1:
        return list(value)
    raise DataError(f"{source}: expected a list or 1-D array, got {_describe(value)}")


def _image_bytes(item: Any, index: int, source: Path) -> bytes:
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 1:
        return item.tobytes()
    raise DataError(
        f"{source}: image {index} is {_describe(item)}; expected encoded image bytes "
        "(bytes or a 1-D uint8 array)"
    )


def _flag(item: Any, index: int, source: Path) -> int:
    if isinstance(item, (bool, np.bool_)):
        return int(item)
    if isinstance(item, (int, np.integer)) and item in (0, 1):
        return int(item)
    raise DataError(f"{source}: issame flag {index} is {_describe(item)}; expected a bool")


def _decode(data: bytes, index: int, size: int, source: Path) -> np.ndarray:
    """Encoded image -> RGB uint8 [3, size, size]."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            rgb = ImageOps.exif_transpose(image).convert("RGB")
            faces = np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)
    except (
        OSError,
        UnidentifiedImageError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
    ) as err:
        raise DataError(
            f"{source}: image {index} (pair {index // 2}) cannot be decoded: {err}"
        ) from None
    if rgb.size != (size, size):
        raise UnalignedImageError(
            f"{source}: image {index} (pair {index // 2}) is a {rgb.size[0]}x{rgb.size[1]} face, "
            f"the pair set asks for {size}x{size} (image_size); faces are never resized: use "
            "this .bin with a model of its faces' size"
        )
    return faces


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"a numpy array {value.dtype} {list(value.shape)}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} item(s)"
    return f"{type(value).__name__} {value!r:.60}"
