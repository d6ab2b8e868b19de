"""What a recognizer's score really responds to, cell by cell: measured cell effects.

The *effect* of grid cell ``c`` on a pair (A, B) is how much the recognizer's cosine rises when
B's pixels in cell ``c`` are replaced by A's (the cells where the backbone's grid really sits,
``xcos.models.geometry``)::

    effect[c] = cos(A, B with cell c taken from A) - cos(A, B)

A cell whose replacement makes the two faces more alike was making them different there: a
high effect is a difference the recognizer sees. This is grid occlusion with the other face's
cell, run on the recognizer's own embedding (not on the xCos score), one backbone image per
cell. It is the ground truth the faithful head is distilled from (on training identities,
``xcos.engine.effect_targets``) and the reference a map is compared with on held-out pairs
(``xcos.explain.faithfulness.effect_agreement``).

Cells where A and B have the same pixels (a pair of one photo and its edited copy) cannot move
the score: their effect is 0 without a backbone pass.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xcos.models.geometry import Spans, cell_window

__all__ = ["cell_effects", "changed_cells"]


def changed_cells(face_a: torch.Tensor, face_b: torch.Tensor, spans: Spans) -> np.ndarray:
    """[g * g] bool: the cells (row-major) where faces [3, S, S] differ in any pixel."""
    return np.array(
        [
            bool((face_a[:, rows, cols] != face_b[:, rows, cols]).any())
            for rows, cols in (cell_window(c, spans) for c in range(len(spans) ** 2))
        ]
    )


@torch.no_grad()
def cell_effects(
    backbone: nn.Module,
    faces_a: torch.Tensor,
    faces_b: torch.Tensor,
    spans: Spans,
    batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Measured effect of every grid cell on the recognizer's cosine, for each pair.

    Args:
        backbone: a recognizer whose forward returns ``"embedding"`` (frozen, eval mode).
        faces_a, faces_b: pairs of aligned faces [N, 3, S, S] (normalised).
        spans: the pixels of the grid's cells (``xcos.models.geometry.pixel_spans``).
        batch_size: backbone images per pass.

    Returns:
        ``(effects [N, g, g], cosines [N], images)``: effects as defined in the module
        docstring, each unmodified pair's cosine, and how many backbone images it took.
    """
    grid = len(spans)
    device = next(backbone.parameters()).device
    faces_a, faces_b = faces_a.to(device), faces_b.to(device)
    embedding_a = F.normalize(backbone(faces_a)["embedding"].float(), dim=1)
    base = (embedding_a * F.normalize(backbone(faces_b)["embedding"].float(), dim=1)).sum(1)
    effects = np.zeros((len(faces_a), grid * grid), dtype=np.float32)
    jobs = [  # (pair, cell) of every replacement that can move the score
        (pair, cell)
        for pair in range(len(faces_a))
        for cell in np.flatnonzero(changed_cells(faces_a[pair], faces_b[pair], spans))
    ]
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        edited = faces_b[[pair for pair, _ in chunk]].clone()
        for row, (pair, cell) in enumerate(chunk):
            rows, cols = cell_window(cell, spans)
            edited[row, :, rows, cols] = faces_a[pair, :, rows, cols]
        embedding = F.normalize(backbone(edited)["embedding"].float(), dim=1)
        pairs = torch.tensor([pair for pair, _ in chunk], device=device)
        cosine = (embedding * embedding_a[pairs]).sum(1) - base[pairs]
        for (pair, cell), value in zip(chunk, cosine.tolist(), strict=True):
            effects[pair, cell] = value
    images = 2 * len(faces_a) + len(jobs)
    return effects.reshape(-1, grid, grid), base.cpu().numpy(), images
