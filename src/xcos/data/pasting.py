"""Pasting part of one aligned face into another: masks and the paste itself."""

from __future__ import annotations

import numpy as np
import torch


def box_mask(size: int, box: tuple[float, float, float, float]) -> np.ndarray:
    """[S, S] mask of the pixels inside ``box`` = (x0, y0, x1, y1) (x1, y1 exclusive)."""
    x0, y0, x1, y1 = box
    ys, xs = np.mgrid[0:size, 0:size]
    return ((xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)).astype(np.float64)


def ellipse_mask(
    size: int, centre: np.ndarray, axes: tuple[float, float], feather: float = 0.8
) -> np.ndarray:
    """[S, S] feathered ellipse: 1 inside, 0 outside, a smooth step across the border (from
    ``feather`` of the radius to its inverse), so a pasted region leaves no hard seam."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    radius = np.sqrt(((xs - centre[0]) / axes[0]) ** 2 + ((ys - centre[1]) / axes[1]) ** 2)
    t = np.clip((1 / feather - radius) / (1 / feather - feather), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def paste(face: torch.Tensor, donor: torch.Tensor, mask: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``face`` with the masked region taken from ``donor`` (faces [3, S, S] or [1, 3, S, S]).

    The donor's region is shifted to the face's mean colour under the mask first, so that a
    different skin tone or lighting does not outline the region; what changes is the
    region's shape and texture: another person's eye, nose or mouth.
    """
    weight = torch.as_tensor(mask, dtype=face.dtype, device=face.device)
    total = weight.sum().clamp_min(1e-6)
    mean_face = (face * weight).sum(dim=(-2, -1), keepdim=True) / total
    mean_donor = (donor * weight).sum(dim=(-2, -1), keepdim=True) / total
    shifted = (donor - mean_donor + mean_face).clamp(-1.0, 1.0)
    return face * (1 - weight) + shifted * weight
