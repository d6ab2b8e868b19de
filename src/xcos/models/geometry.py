"""Where the grid cells of a backbone sit on its input: the geometry that maps are drawn with.

A deep network's grid cell does not see the square of pixels it would cover if the face were
cut into equal cells. With ``conv3x3(stride 2, padding 1)`` stages (ArcFace's IR and iResNet),
output cell ``o`` is centred on input pixel ``2o``, so after four stages cell ``o`` of the 7x7
grid is centred on pixel ``16o`` of a 112-px face: half a cell up and left of the square
``[16o, 16o + 16)``. Figures, occlusion windows and the faithfulness games use the cells where
they really are: a backbone states its cells' centres (``cell_centres``), each pixel belongs to
the cell whose centre is nearest (the border strips to the outermost cells), and a test checks
this against which cell a small change of the input moves the most. The perturbation losses
read the same cells: ``box_coverage`` measures a rectangle against ``grid_edges``.

Coordinates are continuous pixel coordinates: pixel ``i`` spans ``[i, i + 1)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from xcos.models.backbones.protocol import BackboneProtocol


def strided_centres(cells: int, stride: float, first: float) -> np.ndarray:
    """Centres [cells] of cells ``stride`` pixels apart, the first at ``first``."""
    return first + stride * np.arange(cells, dtype=np.float64)


def grid_centres(backbone: BackboneProtocol) -> np.ndarray:
    """Pixel centres [g] of a backbone's (square) grid cells, as it states them
    (``backbone.cell_centres()``, part of ``BackboneProtocol``)."""
    return np.asarray(backbone.cell_centres(), dtype=np.float64)


def grid_edges(backbone: BackboneProtocol, size: int | None = None) -> np.ndarray:
    """Pixel edges [g + 1] of the grid cells on a face of side ``size`` (default: the
    backbone's input size): midpoints between centres, the outer edges at the face's border."""
    size = size or backbone.input_size
    centres = grid_centres(backbone)
    return np.concatenate([[0.0], (centres[1:] + centres[:-1]) / 2, [float(size)]])


def edge_fractions(backbone: BackboneProtocol) -> tuple[float, ...]:
    """``grid_edges`` [g + 1] of the backbone's input as fractions of the face side."""
    size = float(backbone.input_size)
    return tuple(float(edge) / size for edge in grid_edges(backbone))


def box_coverage(boxes: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """[B, g, g]: the share of each grid cell's area inside each box.

    Args:
        boxes: [B, 4] ``x0, y0, x1, y1`` as fractions of the face side.
        edges: [g + 1] the cells' edges along either side as fractions of the face side
            (``edge_fractions``: where the cells really sit, not equal squares).
    """
    low, high = edges[None, :-1], edges[None, 1:]
    x0, y0, x1, y1 = (boxes[:, k, None] for k in range(4))
    rows = (torch.minimum(high, y1) - torch.maximum(low, y0)).clamp_min(0.0) / (high - low)
    columns = (torch.minimum(high, x1) - torch.maximum(low, x0)).clamp_min(0.0) / (high - low)
    return rows[:, :, None] * columns[:, None, :]


Spans = list[tuple[int, int]]  # [start, stop) pixels of each cell along a side


def pixel_spans(edges: np.ndarray, size: int | None = None) -> Spans:
    """``[start, stop)`` pixel indices of each cell: the pixels whose centre lies in it."""
    size = round(float(edges[-1])) if size is None else size
    bounds = np.clip(np.ceil(np.asarray(edges) - 0.5), 0, size).astype(int)
    return [(int(bounds[k]), int(bounds[k + 1])) for k in range(len(bounds) - 1)]


def cell_window(cell: int, spans: Spans) -> tuple[slice, slice]:
    """(rows, columns) of the pixels of grid cell ``cell`` (row-major index)."""
    (y0, y1), (x0, x1) = spans[int(cell) // len(spans)], spans[int(cell) % len(spans)]
    return slice(y0, y1), slice(x0, x1)
