"""Exact decompositions of a recognizer's cosine over the grid cells (training-free maps).

When the embedding is a *linear* function of the grid cells, ``e = sum_c u_c`` with one vector
``u_c`` per cell (Stylianou et al., WACV 2019; Zhu et al., TIP 2021), the cosine of two faces
splits exactly over the cells. With unit embeddings ``e^ = e / |e|``:

- similarity share (sums to the cosine):
  ``s_c = 1/2 (u_c^A . e^B / |e^A| + u_c^B . e^A / |e^B|)``;
- difference share (sums to ``1 - cos = |e^A - e^B|^2 / 2``):
  ``d_c = 1/2 (u_c^A / |e^A| - u_c^B / |e^B|) . (e^A - e^B)``.

Both are symmetric in the two faces. Two cases are covered:

- ``model.cos == "grid"`` (the paper's layout: the embedding is the flattened grid features,
  each cell its own block of coordinates): ``d_c = |g_c^A / |G^A| - g_c^B / |G^B||^2 / 2``.
- ``model.cos == "embedding"`` with a backbone that exposes ``cell_contributions(grid)`` ->
  ``[B, D, h, w]`` summing over the cells to its embedding (dlib's ResNet at level 1).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from xcos.models.backbones.protocol import DecomposableBackbone


def supports_decomposition(model: Any) -> bool:
    """Whether ``model``'s cosine splits exactly over its grid cells."""
    if model.cos_source == "grid":
        return True
    backbone = model.backbone
    return isinstance(backbone, DecomposableBackbone) and backbone.linear_tail


def cell_vectors(model: Any, images: torch.Tensor) -> torch.Tensor:
    """``u_c`` [B, D, h, w] of faces [B, 3, S, S]: one vector per cell, summing to the vector
    whose cosine the model reports (flattened grid features: each cell in its own block)."""
    outputs = model.backbone_outputs(images)
    if model.cos_source == "grid":
        grid = model.head.grid_features(outputs["features"]).float()
        batch, channels, height, width = grid.shape
        cells = height * width
        # Cell c's features occupy coordinates [c*C, (c+1)*C) of the flattened embedding.
        blocks = torch.zeros(batch, cells, channels, cells, dtype=grid.dtype, device=grid.device)
        flat = grid.flatten(2)  # [B, C, cells]
        index = torch.arange(cells, device=grid.device)
        blocks[:, index, :, index] = flat.permute(2, 0, 1)
        return blocks.reshape(batch, cells * channels, height, width)
    if not supports_decomposition(model):
        raise ValueError(
            f"{type(model.backbone).__name__}: its embedding is not linear in the grid cells, "
            "so its cosine has no exact decomposition over them"
        )
    return model.backbone.cell_contributions(outputs["features"]).float()


def shares(vectors_a: torch.Tensor, vectors_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarity shares, difference shares), each [B, h, w], of cell vectors [B, D, h, w]."""
    embedding_a, embedding_b = vectors_a.sum(dim=(2, 3)), vectors_b.sum(dim=(2, 3))
    norm_a = embedding_a.norm(dim=1).clamp_min(1e-12)[:, None, None, None]
    norm_b = embedding_b.norm(dim=1).clamp_min(1e-12)[:, None, None, None]
    unit_a = F.normalize(embedding_a, dim=1)[:, :, None, None]
    unit_b = F.normalize(embedding_b, dim=1)[:, :, None, None]
    similarity = 0.5 * ((vectors_a / norm_a * unit_b).sum(1) + (vectors_b / norm_b * unit_a).sum(1))
    difference = 0.5 * ((vectors_a / norm_a - vectors_b / norm_b) * (unit_a - unit_b)).sum(1)
    return similarity, difference


@torch.no_grad()
def decompose(
    model: Any, images_a: torch.Tensor, images_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarity shares, difference shares) [B, h, w] of the model's cosine for face pairs
    [B, 3, S, S]; they sum to ``cos`` and ``1 - cos`` exactly."""
    vectors = cell_vectors(model, torch.cat([images_a, images_b]))
    half = len(images_a)
    return shares(vectors[:half], vectors[half:])
