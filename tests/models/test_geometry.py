"""Where grid cells really sit (xcos.models.geometry): stated by each backbone, checked by
which cell a small change of the input moves the most."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import require_dlib_weights
from xcos.models.backbones import DlibResNet, IResNet, PatchEncoder
from xcos.models.geometry import box_coverage, edge_fractions, grid_edges, pixel_spans


def test_edges_are_midpoints_between_centres_with_the_border_outside():
    backbone = IResNet(depth=10, width=0.25, embedding_dim=None)
    edges = grid_edges(backbone)
    np.testing.assert_allclose(edges, [0, 8.5, 24.5, 40.5, 56.5, 72.5, 88.5, 112])
    assert pixel_spans(edges)[:2] == [(0, 8), (8, 24)] and pixel_spans(edges)[-1] == (88, 112)
    patches = PatchEncoder(grid=7)
    np.testing.assert_allclose(grid_edges(patches), np.arange(8) * 16)


def test_a_box_on_one_cell_covers_that_cell_as_the_maps_draw_it():
    """The perturbation losses' coverage and the maps' cells are one rule: a box on the
    pixels ``grid_edges`` gives a cell covers that cell, and only it, also where the cells
    are uneven (IR: 16o + 0.5) and where the grid does not divide the face (dlib's 8 cells
    16 px apart on 150 px; equal squares would be 18.75 px)."""
    for backbone in (IResNet(depth=10, width=0.25), DlibResNet(level=2, weights=None)):
        edges = torch.tensor(edge_fractions(backbone))
        np.testing.assert_allclose(edges.numpy() * backbone.input_size, grid_edges(backbone))
        cells = len(edges) - 1
        for row, column in [(0, 0), (1, cells - 2), (cells - 1, 2)]:
            box = edges[[column, row, column + 1, row + 1]][None]
            expected = torch.zeros(1, cells, cells)
            expected[0, row, column] = 1.0
            torch.testing.assert_close(box_coverage(box, edges), expected)


def agreement(backbone, face: torch.Tensor, *edges: np.ndarray, step: int) -> list[float]:
    """For each set of ``edges``: how often the cell whose features change the most under a
    4x4 change of the input is the cell those edges put that change in (changes on inner
    cells only)."""
    backbone.eval()
    size = face.shape[-1]
    spots = [(y, x) for y in range(2, size - 6, step) for x in range(2, size - 6, step)]
    changed = face.repeat(len(spots), 1, 1, 1)
    for k, (y, x) in enumerate(spots):
        changed[k, :, y : y + 4, x : x + 4] *= -1
    with torch.no_grad():
        grid = backbone.forward_features(face)
        moved = torch.cat([backbone.forward_features(part) for part in changed.split(64)])
    moved = (moved - grid).norm(dim=1) / grid.norm(dim=1).clamp_min(1e-6)  # [N, h, w]
    hits, totals = [0] * len(edges), [0] * len(edges)
    for (y, x), change in zip(spots, moved, strict=True):
        found = np.unravel_index(int(change.argmax()), change.shape)
        for k, cuts in enumerate(edges):
            where = tuple(int(np.searchsorted(cuts, v + 2, side="right") - 1) for v in (y, x))
            if all(0 < c < len(cuts) - 2 for c in where):
                hits[k] += found == where
                totals[k] += 1
    return [h / t for h, t in zip(hits, totals, strict=True)]


def smooth_face(size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    noise = torch.rand(1, 3, size // 8, size // 8, generator=generator) * 2 - 1
    return torch.nn.functional.interpolate(noise, size=size, mode="bilinear")


@pytest.mark.slow
def test_ir_cells_sit_half_a_cell_up_and_left_of_equal_squares():
    torch.manual_seed(0)
    backbone = IResNet(depth=10, width=0.25, embedding_dim=None)
    face = smooth_face(112)
    stated, equal = agreement(backbone, face, grid_edges(backbone), np.linspace(0, 112, 8), step=3)
    assert stated > 0.6 and stated > equal + 0.25, (stated, equal)


def test_patch_encoder_cells_see_only_their_patch():
    torch.manual_seed(0)
    backbone = PatchEncoder(grid=4, input_size=64, width=0.25, out_channels=16)
    assert agreement(backbone, smooth_face(64), grid_edges(backbone), step=5) == [1.0]


@pytest.mark.slow
def test_dlib_level_2_cells_where_its_unpadded_layers_put_them():
    require_dlib_weights()
    backbone = DlibResNet(level=2, weights="auto")
    stated, equal = agreement(
        backbone, smooth_face(150), grid_edges(backbone), np.linspace(0, 150, 9), step=9
    )
    assert stated > 0.5 and stated > equal + 0.1, (stated, equal)
