"""Facial regions on an aligned face, and how they fall on the xCos grid.

Faces aligned onto a template (``xcos.data.align``: ArcFace 112 or dlib's 150 chip) have their
eyes, nose and mouth at known places, so a region can be located from the template alone:

- ``left_eye`` / ``right_eye``: an ellipse on the eye point ("left" = smaller x in the image);
- ``nose``: an ellipse from just below the eye line down to the nose tip;
- ``mouth``: an ellipse on the two mouth corners.

Sizes are fractions of the distance between the eyes, so they scale with the template. Masks
are [S, S] floats in [0, 1] with feathered edges (a smooth step across the ellipse's border),
so that a region pasted from another face leaves no hard seam for a recognizer to notice.

On the grid, a change is the set of cells holding a large enough share of it (``region_cells``):
at least ``min_share`` of how much the pixels changed, and always the cell holding the most, so
every change has at least one cell. Cells are where the backbone's cells really sit
(``xcos.models.geometry``), not equal squares.
"""

from __future__ import annotations

import numpy as np
import torch

from xcos.data.align import face_template
from xcos.data.pair_sets import TEMPLATE_SIZES
from xcos.data.pasting import box_mask, ellipse_mask, paste
from xcos.models.geometry import Spans, pixel_spans

__all__ = [
    "FACE_REGIONS",
    "box_mask",
    "cell_regions",
    "cell_shares",
    "change_mass",
    "paste",
    "region_cells",
    "region_masks",
]

#: The regions ``region_masks`` draws, in a fixed order.
FACE_REGIONS = ("left_eye", "right_eye", "nose", "mouth")

#: Ellipse semi-axes (x, y) in units of the distance between the eyes.
_EYE_AXES = (0.36, 0.22)
_NOSE_AXES = (0.26, 0.36)
_MOUTH_AXES_Y = 0.25
_MOUTH_MARGIN_X = 0.12  # beyond each mouth corner


def region_masks(template: str = "arcface", image_size: int | None = None) -> dict[str, np.ndarray]:
    """Feathered masks [S, S] of ``FACE_REGIONS`` on faces aligned onto ``template``.

    Args:
        template: the alignment template (``arcface`` or ``dlib``, see ``xcos.data.align``).
        image_size: the side of the aligned faces (default: the template's own).
    """
    points = face_template(template, image_size)
    size = round(image_size or TEMPLATE_SIZES[template])
    left_eye, right_eye, nose, mouth_left, mouth_right = points
    eyes = np.linalg.norm(right_eye - left_eye)
    eye_axes = (_EYE_AXES[0] * eyes, _EYE_AXES[1] * eyes)
    nose_axes = (_NOSE_AXES[0] * eyes, _NOSE_AXES[1] * eyes)
    nose_centre = np.array([nose[0], nose[1] - 0.15 * eyes])
    mouth_centre = (mouth_left + mouth_right) / 2
    mouth_axes = (
        np.linalg.norm(mouth_right - mouth_left) / 2 + _MOUTH_MARGIN_X * eyes,
        _MOUTH_AXES_Y * eyes,
    )
    return {
        "left_eye": ellipse_mask(size, left_eye, eye_axes),
        "right_eye": ellipse_mask(size, right_eye, eye_axes),
        "nose": ellipse_mask(size, nose_centre, nose_axes),
        "mouth": ellipse_mask(size, mouth_centre, mouth_axes),
    }


def cell_regions(
    template: str, edges: np.ndarray, image_size: int, min_cover: float = 0.25
) -> list[list[str | None]]:
    """[h][w]: the facial region (``FACE_REGIONS``) covering most of each grid cell whose
    edges are ``edges`` [h + 1] on a face of side ``image_size``, or None where no region
    covers at least ``min_cover`` of the cell (cheek, forehead, background)."""
    masks = region_masks(template, image_size)
    spans = pixel_spans(edges, image_size)
    names: list[list[str | None]] = []
    for y0, y1 in spans:
        row: list[str | None] = []
        for x0, x1 in spans:
            cover = {name: float(mask[y0:y1, x0:x1].mean()) for name, mask in masks.items()}
            best = max(cover, key=cover.get)
            row.append(best if y1 > y0 and x1 > x0 and cover[best] >= min_cover else None)
        names.append(row)
    return names


def cell_shares(mass: np.ndarray, spans: Spans) -> np.ndarray:
    """[h, w]: the share of ``mass`` [S, S] (a mask, or how much each pixel changed) falling
    in each grid cell (``xcos.models.geometry.pixel_spans``); sums to 1 over the cells."""
    cells = np.array(
        [[mass[y0:y1, x0:x1].sum() for x0, x1 in spans] for y0, y1 in spans], dtype=np.float64
    )
    total = cells.sum()
    if total <= 0:
        raise ValueError("nothing falls in the grid's cells (empty mask or no change)")
    return cells / total


def region_cells(mass: np.ndarray, spans: Spans, min_share: float = 0.1) -> np.ndarray:
    """[h, w] bool: the cells holding at least ``min_share`` of ``mass``, and the cell holding
    the most of it."""
    shares = cell_shares(mass, spans)
    cells = shares >= min_share
    cells[np.unravel_index(int(np.argmax(shares)), shares.shape)] = True
    return cells


def change_mass(face: torch.Tensor, changed: torch.Tensor) -> np.ndarray:
    """[S, S]: how much each pixel changed between two faces [.., 3, S, S] (summed over
    channels): where the faces really differ, whatever mask made the change."""
    difference = (changed.float() - face.float()).abs().reshape(-1, *face.shape[-2:])
    return difference.sum(dim=0).cpu().numpy()
