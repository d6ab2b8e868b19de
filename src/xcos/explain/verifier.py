"""``Verifier``: verify and explain face pairs with a trained xCos model.

v = Verifier.from_checkpoint("best.pth")
r = v.explain("a.jpg", "b.jpg")        # paths, PIL images, numpy arrays or tensors
r.score, r.same, r.threshold           # the decision and the threshold it used
r.patch_cosine, r.attention, r.contribution, r.faces
r.difference                           # where the faces differ: attention * (1 - patch cosine)
r.as_dict()["most_different_cells"]    # [row, col] of the 3 cells pulling the score down most
r.figure().savefig("pair.png")         # the most different cells outlined on both faces
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from xcos.config import ModelConfig, from_dict
from xcos.data.images import read_rgb, to_image
from xcos.errors import CheckpointError, ConfigError, DataError, UnalignedImageError, XcosError
from xcos.evaluation.evaluator import compare_faces
from xcos.explain.figures import LAYOUTS, most_different_cells
from xcos.models.geometry import grid_edges
from xcos.models.loading import build_and_load
from xcos.models.targets import read_checkpoint, state_dict_of
from xcos.models.xcos_model import XCosModel
from xcos.runtime import resolve_device

ImageLike = str | Path | Image.Image | np.ndarray | torch.Tensor

log = logging.getLogger(__name__)


@dataclass
class Explanation:
    """One verified pair. Maps are [h, w]; ``contribution`` = ``patch_cosine * attention``
    and sums to ``score``; ``difference`` = ``attention * (1 - patch_cosine)``, how much each
    cell pulls the score down (where the two faces differ), sums to ``1 - score``; ``faces``
    are the two aligned RGB faces actually compared; ``cell_edges`` [h + 1] are the cells'
    pixel edges on those faces (``xcos.models.geometry.grid_edges``), None for equal cells."""

    score: float
    same: bool
    threshold: float
    cos: float
    patch_cosine: np.ndarray
    attention: np.ndarray
    contribution: np.ndarray
    faces: tuple[np.ndarray, np.ndarray]
    difference: np.ndarray
    cell_edges: np.ndarray | None = None

    @property
    def most_different_cells(self) -> list[list[int]]:
        """``[row, col]`` of the 3 cells with the highest ``difference``, highest first."""
        return most_different_cells(self.difference)

    def figure(self, layout: str = "paper") -> Figure:
        """The explanation drawn in ``layout``: ``"paper"`` or ``"overlay"``."""
        if layout not in LAYOUTS:
            raise ConfigError(f"layout: expected one of {', '.join(LAYOUTS)}, got {layout!r}")
        return LAYOUTS[layout](
            self.faces[0],
            self.faces[1],
            self.patch_cosine,
            self.attention,
            self.score,
            self.cos,
            threshold=self.threshold,
            difference=self.difference,
            edges=self.cell_edges,
        )

    def as_dict(self) -> dict[str, Any]:
        """The explanation's fields under the API's names, maps as nested lists."""
        return {
            "score": self.score,
            "same": self.same,
            "threshold": self.threshold,
            "cos": self.cos,
            "patch_cosine": self.patch_cosine.tolist(),
            "attention": self.attention.tolist(),
            "contribution": self.contribution.tolist(),
            "difference": self.difference.tolist(),
            "most_different_cells": self.most_different_cells,
        }


class Verifier:
    """Scores and explains pairs with an xCos model, on ``device``, without gradients.

    Args:
        model: the xCos model.
        threshold: the decision threshold on the xCos score (``score > threshold``: same).
        device: ``auto``, ``cpu`` or ``cuda``.
        align: ``auto`` aligns (MTCNN) any image that is not already a square of the model's
            input size; ``always`` / ``never`` force it.
    """

    def __init__(
        self,
        model: XCosModel,
        threshold: float | None,
        device: str = "auto",
        align: str = "auto",
    ) -> None:
        if align not in ("auto", "always", "never"):
            raise ConfigError(f"align: expected auto, always or never, got {align!r}")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.threshold = threshold
        self.align = align
        self._aligner = None

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        threshold: float | None = None,
        metrics: str | Path | None = None,
        device: str = "auto",
        align: str = "auto",
    ) -> Verifier:
        """Build the model from the config stored in an xcos checkpoint and load its weights.

        The threshold is ``threshold`` if given, else the xCos threshold of the first pair set
        in a test run's ``metrics.json``, else the one the checkpoint stored at validation.
        """
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
        if threshold is None and metrics is not None:
            threshold = threshold_from_metrics(metrics)
        if threshold is None:
            threshold = state.get("threshold")
        return cls(model, threshold, device, align)

    def require_threshold(self) -> float:
        """The decision threshold; an error saying where to get one when there is none."""
        if self.threshold is None:
            raise ConfigError(
                "no decision threshold: pass --threshold, or --metrics with a test run's "
                "metrics.json, or use a checkpoint written after validation"
            )
        return self.threshold

    def explain(self, image_a: ImageLike, image_b: ImageLike) -> Explanation:
        """Verify and explain one pair."""
        return self.explain_batch([(image_a, image_b)])[0]

    @torch.no_grad()
    def explain_batch(self, pairs: Sequence[tuple[ImageLike, ImageLike]]) -> list[Explanation]:
        """Verify and explain many pairs in one forward pass of the backbone."""
        self.require_threshold()
        faces = [
            self._face(image, f"face {'AB'[k]} of pair {i}")
            for i, pair in enumerate(pairs)
            for k, image in enumerate(pair)
        ]
        compared = compare_faces(self.model, faces, self.device)
        out = {k: v.float().cpu().numpy() for k, v in compared.items()}
        edges = grid_edges(self.model.backbone, self.model.input_size)
        return [
            Explanation(
                score=float(out["xcos"][i]),
                same=bool(out["xcos"][i] > self.threshold),
                threshold=float(self.threshold),
                cos=float(out["cos"][i]),
                patch_cosine=out["patch_cosine"][i],
                attention=out["attention"][i],
                contribution=out["patch_cosine"][i] * out["attention"][i],
                faces=(faces[2 * i], faces[2 * i + 1]),
                difference=out["difference"][i],
                cell_edges=edges,
            )
            for i in range(len(pairs))
        ]

    def _face(self, image: ImageLike, which: str) -> np.ndarray:
        """An aligned RGB uint8 face [S, S, 3] of the model's input size."""
        size = self.model.input_size
        if isinstance(image, torch.Tensor):
            return to_image(image[0] if image.ndim == 4 else image)
        rgb = _to_rgb(image, which)
        aligned_already = rgb.shape[0] == rgb.shape[1] == size
        if aligned_already and self.align != "always":
            return rgb
        if self.align == "never":  # a resized photo is not an aligned face: refuse, never resize
            height, width = rgb.shape[:2]
            raise UnalignedImageError(
                f"{which}: a {width}x{height} image, and align='never' takes aligned "
                f"{size}x{size} faces only; align it (align='auto', or `xcos explain "
                "--align auto`)"
            )
        # A path goes to the aligner as is, so that its errors name the file.
        source = image if isinstance(image, (str, Path)) else rgb
        try:
            return self._get_aligner().align(source).face
        except XcosError as err:  # DataError: no face found, image too small, ...
            raise DataError(f"{which}: {err}") from err

    def _get_aligner(self):
        if self._aligner is None:
            from xcos.data.align import FaceAligner

            self._aligner = FaceAligner(
                image_size=self.model.input_size, template=self.model.face_template
            )
        return self._aligner


def _to_rgb(image: ImageLike, which: str) -> np.ndarray:
    if isinstance(image, (str, Path)):
        try:
            return read_rgb(image)
        except XcosError as err:  # BadImageError: missing or undecodable file
            raise DataError(f"{which}: {err}") from err
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"{which}: expected a uint8 image array, got {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    return np.ascontiguousarray(array[..., :3])


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
