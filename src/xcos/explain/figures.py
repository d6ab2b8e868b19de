"""Figures of one xCos comparison: face A, face B, patch-cosine, attention and difference maps.

Two layouts: ``pair_figure`` (the paper's: faces and maps side by side) and ``overlay_figure``
(the maps blended over both faces).

Every map is drawn where its cells really are: ``edges`` [g + 1] are the cells' pixel edges
along one side (``xcos.models.geometry.grid_edges``; an IR backbone's 7x7 cells on a 112-px
face are not equal squares). Axes use continuous pixel coordinates (pixel ``i`` spans
``[i, i + 1)``), so a cell ``[e_c, e_c+1) x [e_r, e_r+1)`` is drawn on exactly those pixels.
The most different cells (the top of the difference map, ``attention * (1 - patch_cosine)``)
are outlined on both faces and on the difference map, with their rank.

Figures are built with matplotlib's object API (no pyplot state), so they are safe in
training loops, worker threads and tests.
"""

from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import Normalize, TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from xcos.models.xcos_head import difference_map

#: How many of the most different cells are outlined.
MARKED_CELLS = 3
#: The least span of the patch-cosine colour scale on each side of its centre.
MIN_SIDE = 0.05
#: Outline widths and opacities by rank: the most different cell stands out.
_MARK_WIDTHS = (3.0, 2.0, 1.4)
_MARK_ALPHAS = (1.0, 0.85, 0.7)
_MARK_COLOUR = "#00e5ff"
DIFFERENCE_TITLE = "difference (pulls the score down)"


def most_different_cells(difference: np.ndarray, count: int = MARKED_CELLS) -> list[list[int]]:
    """``[row, col]`` of the ``count`` cells of ``difference`` [h, w] with the highest values,
    highest first (ties in row-major order)."""
    flat = np.asarray(difference).ravel()
    order = np.argsort(-flat, kind="stable")[:count]
    columns = np.asarray(difference).shape[1]
    return [[int(index // columns), int(index % columns)] for index in order]


def cosine_norm(
    patch_cosine: np.ndarray, score: float, threshold: float | None = None
) -> tuple[TwoSlopeNorm, str]:
    """The patch-cosine colour scale and its colour-bar label.

    The scale is centred on what decides: the threshold when given (a cell above it pulls
    towards "same"), else the pair's xCos score. A recognizer's cell cosines often all sit in
    0.6..1.0, where a -1..1 scale paints every pair alike, so the limits come from the map,
    widened to at least ``MIN_SIDE`` on each side of the centre and clipped to [-1, 1]. Only a
    centre at or beyond +-1 (a threshold of 1, identical faces) gets a side past the bound,
    ``MIN_SIDE`` wide, since the norm needs ``vmin < vcenter < vmax``.
    """
    if threshold is not None:
        centre, label = float(threshold), f"centre: threshold {threshold:.3f}"
    else:
        centre, label = float(score), f"centre: xCos {score:.3f}"
    low = max(min(float(np.min(patch_cosine)), centre - MIN_SIDE), -1.0)
    high = min(max(float(np.max(patch_cosine)), centre + MIN_SIDE), 1.0)
    low = low if low < centre else centre - MIN_SIDE
    high = high if high > centre else centre + MIN_SIDE
    return TwoSlopeNorm(vcenter=centre, vmin=low, vmax=high), label


def _cell_edges(
    edges: np.ndarray | None, values: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Row and column edges [h + 1], [w + 1] of the map's cells; ``None``: equal cells."""
    rows, columns = values.shape
    if edges is None:
        return np.linspace(0.0, size, rows + 1), np.linspace(0.0, size, columns + 1)
    edges = np.asarray(edges, dtype=np.float64)
    if len(edges) != rows + 1 or len(edges) != columns + 1:
        raise ValueError(
            f"edges: expected {rows + 1} cell edges for a {values.shape} map, got {len(edges)}"
        )
    return edges, edges


def _frame(axis: Axes, size: int) -> None:
    """Continuous pixel coordinates of a ``size`` face, row 0 at the top, no ticks."""
    axis.set_xlim(0.0, size)
    axis.set_ylim(size, 0.0)
    axis.set_aspect("equal")
    axis.set_xticks([])
    axis.set_yticks([])


def _draw_face(axis: Axes, face: np.ndarray) -> None:
    height, width = face.shape[:2]
    # extent puts pixel i on [i, i + 1), the coordinates the cell edges are given in
    axis.imshow(face, extent=(0.0, width, height, 0.0))
    _frame(axis, height)


def _draw_map(axis: Axes, values: np.ndarray, edges, norm: Normalize, cmap: str, alpha=None):
    """``values`` [h, w] with cell (r, c) on ``[e_c, e_c+1) x [e_r, e_r+1)``; the mesh."""
    row_edges, column_edges = edges
    return axis.pcolormesh(
        column_edges, row_edges, values, cmap=cmap, norm=norm, alpha=alpha, shading="flat"
    )


def _grid_lines(axis: Axes, edges: tuple[np.ndarray, np.ndarray]) -> None:
    row_edges, column_edges = edges
    for position in row_edges[1:-1]:
        axis.axhline(position, color="white", linewidth=0.5, alpha=0.6)
    for position in column_edges[1:-1]:
        axis.axvline(position, color="white", linewidth=0.5, alpha=0.6)


def mark_cells(axis: Axes, cells: list[list[int]], edges: tuple[np.ndarray, np.ndarray]) -> None:
    """Outline ``cells`` ([row, col], highest rank first) at their pixel rectangles, numbered
    1, 2, 3, ...; the first outlined most strongly. Each outline's ``gid`` is
    ``most_different_<rank>``."""
    row_edges, column_edges = edges
    for rank, (row, column) in enumerate(cells):
        x, y = column_edges[column], row_edges[row]
        style = min(rank, len(_MARK_WIDTHS) - 1)
        axis.add_patch(
            Rectangle(
                (x, y),
                column_edges[column + 1] - x,
                row_edges[row + 1] - y,
                fill=False,
                edgecolor=_MARK_COLOUR,
                linewidth=_MARK_WIDTHS[style],
                alpha=_MARK_ALPHAS[style],
                zorder=4,
                gid=f"most_different_{rank + 1}",
            )
        )
        axis.text(
            x + 1.0,
            y + 1.0,
            str(rank + 1),
            color="black",
            fontsize=7,
            ha="left",
            va="top",
            zorder=5,
            clip_on=True,
            bbox={"boxstyle": "square,pad=0.1", "facecolor": _MARK_COLOUR, "linewidth": 0},
        )


def _maps(
    patch_cosine: np.ndarray,
    attention: np.ndarray,
    difference: np.ndarray | None,
    score: float,
    threshold: float | None,
) -> list[tuple[str, np.ndarray, Normalize, str, str]]:
    """(name, values, norm, colour map, colour-bar label) of the three maps, in drawing order."""
    if difference is None:
        difference = difference_map(np.asarray(patch_cosine), np.asarray(attention))
    cosine, centre = cosine_norm(patch_cosine, score, threshold)
    top_attention = float(np.max(attention)) or 1.0
    top_difference = float(np.max(difference))
    return [
        ("patch cosine", patch_cosine, cosine, "RdBu_r", centre),
        ("attention", attention, Normalize(0.0, top_attention), "viridis", "sums to 1"),
        (
            "difference",
            difference,
            Normalize(0.0, top_difference or 1.0),
            "magma_r",
            "pulls the score down",
        ),
    ]


def pair_figure(
    face_a: np.ndarray,
    face_b: np.ndarray,
    patch_cosine: np.ndarray,
    attention: np.ndarray,
    score: float,
    cos: float | None = None,
    label: int | None = None,
    threshold: float | None = None,
    *,
    difference: np.ndarray | None = None,
    edges: np.ndarray | None = None,
) -> Figure:
    """The paper's layout for one pair, plus the difference map: face A, face B, patch
    cosine, attention, difference; the most different cells outlined on both faces and on the
    difference map.

    Args:
        face_a, face_b: aligned RGB faces [H, W, 3] uint8.
        patch_cosine: [h, w] cosine per grid cell, on a diverging scale centred on
            ``threshold`` when given, else on ``score`` (``cosine_norm``).
        attention: [h, w] weights summing to 1.
        score: the xCos score; ``cos``, ``label`` and ``threshold`` are shown when given.
        difference: [h, w] ``attention * (1 - patch_cosine)``; computed when None.
        edges: [h + 1] pixel edges of the cells along one side (``geometry.grid_edges``);
            None cuts the face into equal cells.
    """
    maps = _maps(patch_cosine, attention, difference, score, threshold)
    size = face_a.shape[0]
    cell_edges = _cell_edges(edges, patch_cosine, size)
    marked = most_different_cells(maps[2][1])
    figure = Figure(figsize=(13.5, 3.0), dpi=100)
    axes = figure.subplots(1, 5)
    for axis, face, title in ((axes[0], face_a, "face A"), (axes[1], face_b, "face B")):
        _draw_face(axis, face)
        _grid_lines(axis, cell_edges)
        mark_cells(axis, marked, cell_edges)
        axis.set_title(title, fontsize=10)
    titles = ("patch cosine", "attention (sums to 1)", DIFFERENCE_TITLE)
    for axis, (_, values, norm, cmap, bar_label), title in zip(axes[2:], maps, titles, strict=True):
        mesh = _draw_map(axis, values, cell_edges, norm, cmap)
        _frame(axis, size)
        _grid_lines(axis, cell_edges)
        axis.set_title(title, fontsize=10)
        bar = figure.colorbar(mesh, ax=axis, fraction=0.046, pad=0.04)
        bar.set_label(bar_label, fontsize=8)
    mark_cells(axes[4], marked, cell_edges)
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
    *,
    difference: np.ndarray | None = None,
    edges: np.ndarray | None = None,
) -> Figure:
    """The maps blended over both faces: patch cosine (top row, centred as in
    ``pair_figure``), attention (middle row) and difference (bottom row), each over face A
    and face B, with one colour bar per row and the most different cells outlined on every
    panel. Arguments as for ``pair_figure``; ``alpha`` is the maps' opacity.

    Each cell is painted flat on the pixels it describes (``edges``), so uneven cells show
    as they are; the cell lines stay drawn.
    """
    maps = _maps(patch_cosine, attention, difference, score, threshold)
    size = face_a.shape[0]
    cell_edges = _cell_edges(edges, patch_cosine, size)
    marked = most_different_cells(maps[2][1])
    figure = Figure(figsize=(6.6, 9.4), dpi=100)
    axes = figure.subplots(3, 2)
    for row, (name, values, norm, cmap, bar_label) in enumerate(maps):
        for column, (face, which) in enumerate(((face_a, "A"), (face_b, "B"))):
            axis = axes[row, column]
            _draw_face(axis, face)
            mesh = _draw_map(axis, values, cell_edges, norm, cmap, alpha)
            _grid_lines(axis, cell_edges)
            mark_cells(axis, marked, cell_edges)
            axis.set_title(f"{name} over face {which}", fontsize=10)
        bar = figure.colorbar(mesh, ax=list(axes[row]), fraction=0.046, pad=0.04)
        bar.set_label(bar_label, fontsize=8)
    figure.suptitle(_caption(score, cos, label, threshold))
    return figure


#: Figure layouts by name: the paper's panels, or the maps over the faces.
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
