"""Figures of one xCos comparison: face A, face B, patch-cosine map, attention map, score.

Two layouts: ``pair_figure`` (the paper's: faces and maps side by side) and ``overlay_figure``
(the maps blended over both faces).

Figures are built with matplotlib's object API (no pyplot state), so they are safe in
training loops, worker threads and tests.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure


def _grid_lines(axis, size: int, cells: int) -> None:
    for k in range(1, cells):
        position = k * size / cells - 0.5
        axis.axhline(position, color="white", linewidth=0.5, alpha=0.6)
        axis.axvline(position, color="white", linewidth=0.5, alpha=0.6)


def pair_figure(
    face_a: np.ndarray,
    face_b: np.ndarray,
    patch_cosine: np.ndarray,
    attention: np.ndarray,
    score: float,
    cos: float | None = None,
    label: int | None = None,
    threshold: float | None = None,
) -> Figure:
    """The paper's layout for one pair.

    Args:
        face_a, face_b: aligned RGB faces [H, W, 3] uint8.
        patch_cosine: [h, w] cosine per grid cell, shown on a diverging -1..1 scale.
        attention: [h, w] weights summing to 1.
        score: the xCos score; ``cos``, ``label`` and ``threshold`` are shown when given.
    """
    figure = Figure(figsize=(10.5, 3.0), dpi=100)
    axes = figure.subplots(1, 4)
    cells = patch_cosine.shape[0]
    for axis, face, title in ((axes[0], face_a, "face A"), (axes[1], face_b, "face B")):
        axis.imshow(face)
        _grid_lines(axis, face.shape[0], cells)
        axis.set_title(title)
    image = axes[2].imshow(patch_cosine, cmap="RdBu_r", vmin=-1.0, vmax=1.0)
    axes[2].set_title("patch cosine (-1..1)")
    figure.colorbar(image, ax=axes[2], fraction=0.046, pad=0.04)
    image = axes[3].imshow(attention, cmap="viridis", vmin=0.0)
    axes[3].set_title("attention (sums to 1)")
    figure.colorbar(image, ax=axes[3], fraction=0.046, pad=0.04)
    for axis in axes:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(_caption(score, cos, label, threshold))
    figure.tight_layout()
    return figure


def overlay_figure(
    face_a: np.ndarray,
    face_b: np.ndarray,
    patch_cosine: np.ndarray,
    attention: np.ndarray,
    score: float,
    cos: float | None = None,
    label: int | None = None,
    threshold: float | None = None,
    alpha: float = 0.5,
) -> Figure:
    """The maps upsampled over both faces: patch cosine (top row, -1..1) and attention (bottom
    row), each blended over face A and face B, with one colour bar per row.

    Each grid cell covers the part of the face it describes; bilinear upsampling makes the maps
    readable at a glance while the cell lines stay drawn.
    """
    figure = Figure(figsize=(6.6, 6.4), dpi=100)
    axes = figure.subplots(2, 2)
    rows = (
        (patch_cosine, "RdBu_r", -1.0, 1.0, "patch cosine"),
        (attention, "viridis", 0.0, float(attention.max()) or 1.0, "attention"),
    )
    for row, (values, cmap, low, high, name) in enumerate(rows):
        for column, (face, which) in enumerate(((face_a, "A"), (face_b, "B"))):
            axis = axes[row, column]
            axis.imshow(face)
            side = face.shape[0]
            image = axis.imshow(
                values,
                cmap=cmap,
                vmin=low,
                vmax=high,
                alpha=alpha,
                interpolation="bilinear",
                extent=(-0.5, side - 0.5, side - 0.5, -0.5),
            )
            _grid_lines(axis, side, values.shape[0])
            axis.set_title(f"{name} over face {which}")
            axis.set_xticks([])
            axis.set_yticks([])
        figure.colorbar(image, ax=list(axes[row]), fraction=0.046, pad=0.04)
    figure.suptitle(_caption(score, cos, label, threshold))
    return figure


#: Figure layouts by name: the paper's four panels, or the maps over the faces.
LAYOUTS = {"paper": pair_figure, "overlay": overlay_figure}


def _caption(score: float, cos: float | None, label: int | None, threshold: float | None) -> str:
    parts = [f"xCos = {score:.3f}"]
    if cos is not None:
        parts.append(f"cos = {cos:.3f}")
    if threshold is not None:
        decision = "same" if score > threshold else "different"
        parts.append(f"threshold {threshold:.3f} -> {decision}")
    if label is not None:
        parts.append(f"truth: {'same' if label else 'different'}")
    return "   ".join(parts)


def save_figure(figure: Figure, path) -> None:
    figure.savefig(path, bbox_inches="tight")


def example_figure(example: dict, threshold: float | None = None) -> Figure:
    """``pair_figure`` of one entry of ``evaluation.evaluator.explain_pairs``."""
    return pair_figure(
        example["face_a"],
        example["face_b"],
        example["patch_cosine"],
        example["attention"],
        example["xcos"],
        example.get("cos"),
        example.get("label"),
        threshold,
    )
