"""Face detection (MTCNN) and 5-point similarity alignment onto the ArcFace 112 x 112 template.

Pipeline, per image:

1. Decode at the data boundary to RGB uint8 (EXIF rotation applied; grayscale, palette, RGBA,
   CMYK... all become RGB), with bounded memory: an image above ``pixel_limit`` (40 MP) is
   refused from its header before decoding; one above ``max_pixels`` (20 MP) is reduced
   *while decoding* when it is a JPEG (the decoder's DCT scaling by 1/2, 1/4 or 1/8, see
   ``PIL.Image.draft``), then resized to fit ``max_pixels``. Alignment works on that bounded
   "working" image; landmarks, boxes and the transform are reported in the coordinates of the
   full-resolution source (EXIF-rotated), so they are independent of that reduction.
2. Detection runs on a copy no larger than ``detect_size`` on its longer side (never
   upscaled); images of equal detection size are stacked and detected in one batch. Only this
   copy becomes a float tensor. Detections are mapped back to the working image.
3. One face is chosen (the largest, or the most central), a similarity transform (rotation,
   uniform scale, translation: no shear, no stretch) is fitted by least squares from its 5
   landmarks onto the template scaled by ``image_size / 112``, and the face is warped with
   bilinear interpolation (after an area pre-shrink when the face is reduced a lot, so that
   large faces do not alias).
4. No face: ``no_face="error"`` raises a ``DataError`` naming the image;
   ``no_face="center_crop"`` (opt-in, for pre-centred sets such as LFW's deep-funneled images)
   returns a centred square crop, flagged ``fallback=True`` and counted in ``stats``.

Detection is MTCNN (``xcos.data.mtcnn``) with facenet-pytorch's weights, shipped inside its
wheel (MIT). The package is installed without its dependencies (its pins would downgrade torch,
numpy and pillow); of those, only ``requests`` (imported by its ``__init__``) is needed, and it
is a dependency of xcos. Nothing is downloaded at run time.

Coordinates: landmarks are in pixel-index coordinates (the centre of pixel (0, 0) is (0, 0)),
as ``cv2.warpAffine`` uses them; boxes are ``[x1, y1, x2, y2]`` with the image spanning
``[0, W] x [0, H]``. Landmark order: left eye, right eye, nose tip, left mouth corner, right
mouth corner ("left" = smaller x in the image), as in the template.
"""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from PIL import Image, ImageOps

from xcos.data.images import DEFAULT_MAX_PIXELS, array_to_rgb, check_pixels, open_image
from xcos.data.mtcnn import Detections, MTCNNDetector
from xcos.data.pair_sets import TEMPLATE_SIZES
from xcos.errors import BadImageError, DataError, NoFaceError

__all__ = [
    "ARCFACE_TEMPLATE",
    "DLIB_CHIP_TEMPLATE",
    "AlignStats",
    "AlignedFace",
    "Detections",
    "FaceAligner",
    "LoadedImage",
    "MTCNNDetector",
    "arcface_template",
    "face_template",
    "load_bounded_rgb",
    "similarity_transform",
    "warp_affine",
]

ImageInput = np.ndarray | Image.Image | str | Path | bytes

#: Standard ArcFace 5-point template for 112 x 112 crops, (x, y): left eye, right eye, nose
#: tip, left mouth corner, right mouth corner.
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)

#: Images smaller than this on a side are rejected (MTCNN cannot find a face in them).
MIN_IMAGE_SIDE = 20


#: Where MTCNN's five points sit in dlib's 150 x 150 face chip (padding 0.25), (x, y): medians
#: over LFW of the points mapped by dlib's own chip transform (shared/docs/pretrained-models.md).
#: A similarity transform onto them gives the chips dlib's ResNet was trained on.
DLIB_CHIP_TEMPLATE = np.array(
    [
        [47.8, 46.0],
        [102.2, 46.1],
        [74.8, 78.5],
        [51.0, 105.6],
        [98.7, 105.6],
    ],
    dtype=np.float64,
)

#: Template name -> (landmarks, side of the crop they are given for).
TEMPLATES = {
    "arcface": (ARCFACE_TEMPLATE, TEMPLATE_SIZES["arcface"]),
    "dlib": (DLIB_CHIP_TEMPLATE, TEMPLATE_SIZES["dlib"]),
}


def face_template(name: str = "arcface", image_size: int | None = None) -> np.ndarray:
    """The landmarks of template ``name`` scaled uniformly to ``image_size`` (default: its own).

    ``arcface``: the ArcFace 112 x 112 template; ``dlib``: dlib's 150 x 150 chip.
    """
    if name not in TEMPLATES:
        raise ValueError(f"template: expected one of {', '.join(TEMPLATES)}, got {name!r}")
    points, side = TEMPLATES[name]
    return points * ((image_size or side) / side)


def arcface_template(image_size: int = 112) -> np.ndarray:
    """The template for ``image_size`` x ``image_size`` crops: one uniform scale of the 112 one.

    (The original code stretched it non-uniformly; a single factor keeps the face's shape.)
    """
    return ARCFACE_TEMPLATE * (image_size / 112.0)


# --------------------------------------------------------------------------------------------
# Similarity transform and warping
# --------------------------------------------------------------------------------------------


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` to ``dst``.

    Umeyama's closed form, with reflections excluded. Returns the 2 x 3 matrix ``M`` with
    ``dst ~= src @ M[:, :2].T + M[:, 2]``; ``M[:, :2]`` is always ``s * R`` (no shear, no
    non-uniform scale).

    Args:
        src, dst: [N, 2] corresponding points, N >= 2, ``src`` not all equal.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 2 or src.shape != dst.shape or len(src) < 2:
        raise ValueError(f"expected two [N, 2] point arrays (N >= 2), got {src.shape} {dst.shape}")
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = (src_c**2).sum() / len(src)
    if src_var <= 1e-12:
        raise ValueError("similarity_transform: source points coincide")
    cov = dst_c.T @ src_c / len(src)
    u, sing, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # a reflection fits better: take the best rotation
        d[1] = -1.0
    rotation = u @ np.diag(d) @ vt
    scale = (sing * d).sum() / src_var
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - matrix[:, :2] @ src_mean
    return matrix


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """2 x 3 affine ``outer o inner`` (apply ``inner`` first)."""
    out = np.empty((2, 3))
    out[:, :2] = outer[:, :2] @ inner[:, :2]
    out[:, 2] = outer[:, :2] @ inner[:, 2] + outer[:, 2]
    return out


def _scale_matrix(sx: float, sy: float) -> np.ndarray:
    """Affine map between two pixel grids of one image (pixel centres at integers)."""
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5]])


def warp_affine(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """Warp RGB uint8 ``image`` by ``matrix`` (source -> output) into ``size`` x ``size``.

    Bilinear interpolation, black outside the image. When the map shrinks by more than
    ``1 / 0.8``, the part of the image that the output sees is first reduced with area
    averaging, so that large faces do not alias.
    """
    linear = matrix[:, :2]
    scale = math.sqrt(abs(np.linalg.det(linear)))
    if scale < 0.8:
        inverse = cv2.invertAffineTransform(matrix.astype(np.float64))
        corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], dtype=np.float64) - 0.5
        seen = _apply(inverse, corners)
        height, width = image.shape[:2]
        margin = 2.0 / scale + 2
        x0 = int(np.clip(np.floor(seen[:, 0].min() - margin), 0, width))
        y0 = int(np.clip(np.floor(seen[:, 1].min() - margin), 0, height))
        x1 = int(np.clip(np.ceil(seen[:, 0].max() + margin), 0, width))
        y1 = int(np.clip(np.ceil(seen[:, 1].max() + margin), 0, height))
        if x1 - x0 >= 2 and y1 - y0 >= 2:
            ratio = scale / 0.8
            new_w = max(1, round((x1 - x0) * ratio))
            new_h = max(1, round((y1 - y0) * ratio))
            crop = cv2.resize(
                np.ascontiguousarray(image[y0:y1, x0:x1]),
                (new_w, new_h),
                interpolation=cv2.INTER_AREA,
            )
            # resized pixel q -> source pixel: x0 + (q + 0.5) * (crop_w / new_w) - 0.5
            back = _scale_matrix((x1 - x0) / new_w, (y1 - y0) / new_h)
            back[:, 2] += (x0, y0)
            image, matrix = crop, _compose(matrix, back)
    return cv2.warpAffine(
        np.ascontiguousarray(image),
        matrix.astype(np.float64),
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )


# --------------------------------------------------------------------------------------------
# Decoding with bounded memory
# --------------------------------------------------------------------------------------------


@dataclass
class LoadedImage:
    """A decoded RGB working image and how it relates to the full-resolution source.

    ``to_source`` maps working-image pixel coordinates to the source's (EXIF-rotated,
    full-resolution) ones; it is the identity unless the image was reduced to ``max_pixels``.
    """

    rgb: np.ndarray
    name: str
    source_size: tuple[int, int]  # (width, height) of the full-resolution, EXIF-rotated source
    to_source: np.ndarray = field(default_factory=lambda: _scale_matrix(1.0, 1.0))


def _fit_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    factor = math.sqrt(max_pixels / (width * height))
    return max(1, math.floor(width * factor)), max(1, math.floor(height * factor))


def _bounded_pil_to_rgb(
    image: Image.Image, max_pixels: int, draft: bool
) -> tuple[np.ndarray, tuple[int, int]]:
    width, height = image.size
    orientation = image.getexif().get(0x0112, 1)
    source_size = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
    if draft and width * height > max_pixels and image.format == "JPEG":
        # smallest power-of-two reduction (the decoder offers 1/2, 1/4, 1/8) that fits
        factor = 2 ** math.ceil(math.log2(math.sqrt(width * height / max_pixels)))
        factor = min(factor, 8)
        image.draft("RGB", (math.ceil(width / factor), math.ceil(height / factor)))
    image = ImageOps.exif_transpose(image)
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.width * image.height > max_pixels:
        image = image.resize(
            _fit_size(image.width, image.height, max_pixels), Image.BILINEAR, reducing_gap=2.0
        )
    return np.asarray(image, dtype=np.uint8).copy(), source_size


def load_bounded_rgb(
    source: ImageInput,
    max_pixels: int = 20_000_000,
    name: str = "",
    pixel_limit: int | None = DEFAULT_MAX_PIXELS,
) -> LoadedImage:
    """Decode ``source`` (path, encoded bytes, PIL image or array) to an RGB uint8 working image.

    Arrays must be uint8 [H, W], [H, W, 1], [H, W, 3] (taken as RGB) or [H, W, 4] (RGBA; alpha
    dropped). Images above ``max_pixels`` are reduced (JPEG files while decoding, see the module
    docstring). Other formats, and PIL images passed in (the caller's object is not changed),
    are decoded as uint8 first, then resized. Any image above ``pixel_limit`` (None: no limit)
    is refused, files and bytes from their header before anything is decoded.

    Raises:
        ImageTooLargeError: more than ``pixel_limit`` pixels; the message names the image.
        BadImageError: the file cannot be decoded (truncated, not an image); the message names it.
        DataError: an array of the wrong dtype or shape.
    """
    if isinstance(source, (str, Path, bytes)):
        if isinstance(source, bytes):
            name, opened = name or "<bytes>", io.BytesIO(source)
        else:
            name, opened = name or str(source), source
        with open_image(opened, name, pixel_limit) as image:
            try:  # JPEGs are reduced while decoding
                rgb, source_size = _bounded_pil_to_rgb(image, max_pixels, draft=True)
            except (OSError, SyntaxError, ValueError) as err:
                raise BadImageError(f"cannot decode image {name!r}: {err}") from err
    elif isinstance(source, Image.Image):
        name = name or getattr(source, "filename", "") or "<PIL image>"
        check_pixels(source.size, name, pixel_limit)
        try:
            rgb, source_size = _bounded_pil_to_rgb(source, max_pixels, draft=False)
        except (OSError, SyntaxError, ValueError) as err:
            raise BadImageError(f"cannot decode image {name!r}: {err}") from err
    elif isinstance(source, np.ndarray):
        name = name or "<array>"
        rgb = array_to_rgb(source, name)
        source_size = (rgb.shape[1], rgb.shape[0])
        check_pixels(source_size, name, pixel_limit)
        if rgb.shape[0] * rgb.shape[1] > max_pixels:
            small = Image.fromarray(rgb).resize(
                _fit_size(rgb.shape[1], rgb.shape[0], max_pixels), Image.BILINEAR, reducing_gap=2.0
            )
            rgb = np.asarray(small, dtype=np.uint8).copy()
    else:
        raise DataError(
            f"{name or 'image'}: expected a file path, PIL image or uint8 array, "
            f"got {type(source).__name__}"
        )
    work_h, work_w = rgb.shape[:2]
    to_source = _scale_matrix(source_size[0] / work_w, source_size[1] / work_h)
    return LoadedImage(rgb=rgb, name=name, source_size=source_size, to_source=to_source)


def image_name(image: ImageInput, index: int, names: Sequence[str] | None = None) -> str:
    """What errors call input ``index``: its given name, else "" for a path (the path names
    it), else its position and type."""
    if names:
        return names[index]
    return "" if isinstance(image, (str, Path)) else f"image #{index} ({type(image).__name__})"


def load_face_image(
    image: ImageInput, max_pixels: int, name: str = "", pixel_limit: int | None = None
) -> LoadedImage:
    """``load_bounded_rgb``, refusing images too small to hold a face (a DataError naming it)."""
    return big_enough_for_a_face(load_bounded_rgb(image, max_pixels, name, pixel_limit))


def big_enough_for_a_face(loaded: LoadedImage) -> LoadedImage:
    """``loaded``, or a DataError naming it when a side is under ``MIN_IMAGE_SIDE`` pixels."""
    height, width = loaded.rgb.shape[:2]
    if min(height, width) < MIN_IMAGE_SIDE:
        raise DataError(
            f"{loaded.name}: image is {width}x{height} pixels; face alignment needs at least "
            f"{MIN_IMAGE_SIDE} pixels on each side"
        )
    return loaded


# --------------------------------------------------------------------------------------------
# MTCNN
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# The aligner
# --------------------------------------------------------------------------------------------


@dataclass
class AlignedFace:
    """One aligned face.

    Attributes:
        face: RGB uint8 [S, S, 3].
        landmarks: [5, 2] detected landmarks in the source image (full resolution, EXIF-rotated),
            ``None`` for a fallback crop.
        box: detected face box (x1, y1, x2, y2) in the source image; for a fallback, the crop.
        score: O-Net detection probability (0.0 for a fallback).
        fallback: True when no face was found and a centred crop was returned instead.
        matrix: 2 x 3 affine map from source-image pixels to ``face`` pixels.
        name: the image's path (or a description for in-memory images).
    """

    face: np.ndarray
    landmarks: np.ndarray | None
    box: np.ndarray
    score: float
    fallback: bool
    matrix: np.ndarray
    name: str = ""


@dataclass
class AlignStats:
    """Counters over an aligner's life: images aligned, faces detected, centred-crop fallbacks,
    and images without a face that raised an error."""

    images: int = 0
    faces: int = 0
    fallbacks: int = 0
    no_face_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class FaceAligner:
    """Detect the face of each image with MTCNN and align it onto the ArcFace template.

    Thread-safe: ``align_batch`` may run in several threads at once (``data.prepare`` does).

    Args:
        image_size: side of the aligned square face (the template is scaled uniformly to it).
        template: ``"arcface"`` (the ArcFace 112 x 112 layout) or ``"dlib"`` (dlib's 150 x 150
            face chip with padding 0.25, for dlib's ResNet; use ``image_size=150``).
        select: which face when several are found: ``"largest"`` box, or ``"central"`` (box
            centre nearest the image centre).
        no_face: ``"error"`` raises a ``DataError`` naming the image; ``"center_crop"`` returns a
            centred square crop (flagged ``fallback``; counted in ``stats``), for pre-centred sets
            such as LFW's deep-funneled images.
        center_crop_fraction: side of that crop as a fraction of the image's shorter side. The
            default 0.53 is the median side of the region that MTCNN + ArcFace alignment keeps
            of LFW's 250 x 250 deep-funneled images (about 132 px); that region's centre lies
            about 9 px above the image centre, the crop stays centred.
        device: torch device for detection.
        max_pixels: larger images are reduced before anything else (JPEG while decoding);
            alignment works on the reduced image, coordinates are reported at full resolution.
        pixel_limit: larger images are refused (``ImageTooLargeError``) from their header,
            before they are decoded (``--max-pixels``; None: no limit).
        detect_size: detection runs on a copy whose longer side is at most this (never upscaled).
        min_face_size: smallest face searched for, in pixels of that detection copy.
        thresholds: MTCNN P-, R-, O-Net score thresholds.
        pyramid_factor: MTCNN image-pyramid ratio.
        batch_size: images decoded and detected together by ``align_batch`` (bounds memory).
    """

    def __init__(
        self,
        image_size: int = 112,
        template: Literal["arcface", "dlib"] = "arcface",
        select: Literal["largest", "central"] = "largest",
        no_face: Literal["error", "center_crop"] = "error",
        center_crop_fraction: float = 0.53,
        device: str = "cpu",
        max_pixels: int = 20_000_000,
        detect_size: int = 640,
        min_face_size: float = 20,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        pyramid_factor: float = 0.709,
        batch_size: int = 32,
        pixel_limit: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        if image_size < 16:
            raise ValueError(f"image_size: expected at least 16, got {image_size}")
        if select not in ("largest", "central"):
            raise ValueError(f"select: expected 'largest' or 'central', got {select!r}")
        if no_face not in ("error", "center_crop"):
            raise ValueError(f"no_face: expected 'error' or 'center_crop', got {no_face!r}")
        if not 0 < center_crop_fraction <= 1:
            raise ValueError(
                f"center_crop_fraction: expected a value in (0, 1], got {center_crop_fraction}"
            )
        if max_pixels < MIN_IMAGE_SIDE**2 or detect_size < MIN_IMAGE_SIDE or batch_size < 1:
            raise ValueError("max_pixels, detect_size and batch_size are too small")
        self.image_size = image_size
        self.select = select
        self.no_face = no_face
        self.center_crop_fraction = center_crop_fraction
        self.max_pixels = max_pixels
        self.pixel_limit = pixel_limit
        self.detect_size = detect_size
        self.batch_size = batch_size
        self.detector = MTCNNDetector(min_face_size, thresholds, pyramid_factor, device)
        self.template_name = template
        self.template = face_template(template, image_size)
        self.stats = AlignStats()
        self._stats_lock = threading.Lock()  # align_batch may run in several threads at once

    thread_safe = True

    def settings(self) -> dict:
        """JSON-friendly constructor settings (for provenance, e.g. a pack's manifest)."""
        return {
            "image_size": self.image_size,
            "select": self.select,
            "no_face": self.no_face,
            "center_crop_fraction": self.center_crop_fraction,
            "max_pixels": self.max_pixels,
            "pixel_limit": self.pixel_limit,
            "detect_size": self.detect_size,
            "min_face_size": self.detector.min_face_size,
            "thresholds": list(self.detector.thresholds),
            "pyramid_factor": self.detector.pyramid_factor,
            "template": self.template.tolist(),
        }

    def reset_stats(self) -> None:
        self.stats = AlignStats()

    def load(self, image: ImageInput, name: str = "") -> LoadedImage:
        """Decode ``image`` to the bounded RGB working image; tiny images raise a DataError."""
        return load_face_image(image, self.max_pixels, name, self.pixel_limit)

    def detection_input(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The copy detection runs on (longer side <= detect_size) and its map to ``rgb``."""
        height, width = rgb.shape[:2]
        if max(height, width) <= self.detect_size:
            return rgb, _scale_matrix(1.0, 1.0)
        factor = self.detect_size / max(height, width)
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        return small, _scale_matrix(width / size[0], height / size[1])

    def align(self, image: ImageInput, name: str = "") -> AlignedFace:
        """Align one image (path, encoded bytes, PIL image, or RGB/gray/RGBA uint8 array);
        errors name it ``name`` (default: its path, or its position and type)."""
        return self.align_batch([image], [name] if name else None)[0]

    def align_batch(
        self, images: Sequence[ImageInput], names: Sequence[str] | None = None
    ) -> list[AlignedFace]:
        """Align images, detecting ``batch_size`` at a time (equal detection sizes batched)."""
        results: list[AlignedFace] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            names_here = [image_name(img, start + i, names) for i, img in enumerate(chunk)]
            loaded = [self.load(img, name) for img, name in zip(chunk, names_here, strict=True)]
            inputs = [self.detection_input(item.rgb) for item in loaded]
            detections: list[Detections | None] = [None] * len(loaded)
            by_shape: dict[tuple[int, ...], list[int]] = {}
            for index, (small, _) in enumerate(inputs):
                by_shape.setdefault(small.shape, []).append(index)
            for indices in by_shape.values():
                found = self.detector.detect(np.stack([inputs[i][0] for i in indices]))
                for index, found_one in zip(indices, found, strict=True):
                    detections[index] = found_one
            for item, (_, to_work), found in zip(loaded, inputs, detections, strict=True):
                results.append(self._align_one(item, to_work, found))
        return results

    def _choose(self, boxes: np.ndarray, width: int, height: int) -> int:
        if self.select == "largest":
            return int(np.argmax(np.prod(boxes[:, 2:4] - boxes[:, 0:2], axis=1)))
        centres = (boxes[:, 0:2] + boxes[:, 2:4]) / 2
        return int(np.argmin(np.linalg.norm(centres - (width / 2, height / 2), axis=1)))

    def _count(self, counter: str) -> None:
        with self._stats_lock:
            setattr(self.stats, counter, getattr(self.stats, counter) + 1)

    def _align_one(
        self, item: LoadedImage, to_work: np.ndarray, found: Detections | None
    ) -> AlignedFace:
        self._count("images")
        if found is None or not len(found):
            return self._no_face(item)
        self._count("faces")
        # detection copy -> working image (boxes: continuous coordinates, a pure scaling)
        work_scale = np.tile(np.diag(to_work[:, :2]), 2)
        boxes = found.boxes * work_scale
        pick = self._choose(boxes, item.rgb.shape[1], item.rgb.shape[0])
        landmarks = _apply(to_work, found.landmarks[pick])
        matrix = similarity_transform(landmarks, self.template)
        face = warp_affine(item.rgb, matrix, self.image_size)
        return AlignedFace(
            face=face,
            landmarks=_apply(item.to_source, landmarks),
            box=boxes[pick] * np.tile(np.diag(item.to_source[:, :2]), 2),
            score=float(found.scores[pick]),
            fallback=False,
            matrix=_compose(matrix, cv2.invertAffineTransform(item.to_source)),
            name=item.name,
        )

    def _no_face(self, item: LoadedImage) -> AlignedFace:
        if self.no_face == "error":
            self._count("no_face_errors")
            raise NoFaceError(
                f"{item.name}: no face found (MTCNN, min_face_size="
                f"{self.detector.min_face_size}, thresholds={list(self.detector.thresholds)}); "
                "use no_face='center_crop' for pre-centred images"
            )
        self._count("fallbacks")
        height, width = item.rgb.shape[:2]
        side = self.center_crop_fraction * min(height, width)
        x0, y0 = (width - side) / 2, (height - side) / 2
        scale = self.image_size / side
        # continuous [x0, x0 + side] -> [0, S]; in pixel-index coordinates (centres at integers)
        matrix = np.array(
            [[scale, 0.0, (0.5 - x0) * scale - 0.5], [0.0, scale, (0.5 - y0) * scale - 0.5]]
        )
        face = warp_affine(item.rgb, matrix, self.image_size)
        sx, sy = np.diag(item.to_source[:, :2])
        return AlignedFace(
            face=face,
            landmarks=None,
            box=np.array([x0 * sx, y0 * sy, (x0 + side) * sx, (y0 + side) * sy]),
            score=0.0,
            fallback=True,
            matrix=_compose(matrix, cv2.invertAffineTransform(item.to_source)),
            name=item.name,
        )
