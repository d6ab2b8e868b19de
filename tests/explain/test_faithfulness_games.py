"""Known answers of the faithfulness games: a model whose cells are independent by construction
hits every swap and every one-region pair; a random map scores at chance; a constant map never
scores; a map of plain pixel change passes the pointing game but not the swap game."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xcos.explain.faithfulness import (
    OneRegionPair,
    favourite_cell_share,
    play_pointing_game,
    play_swap_game,
)
from xcos.explain.regions import paste, region_masks
from xcos.models.backbones import PatchEncoder
from xcos.models.geometry import grid_edges, pixel_spans
from xcos.models.xcos_head import XCosHead
from xcos.models.xcos_model import XCosModel, split_descriptors

SIZE, GRID = 64, 4


@pytest.fixture(scope="module")
def local_model() -> XCosModel:
    """Every cell encoded from its own pixels only (a patch encoder, uniform attention)."""
    torch.manual_seed(0)
    backbone = PatchEncoder(grid=GRID, input_size=SIZE, width=0.25, out_channels=32)
    head = XCosHead(backbone.out_channels, grid_channels=32, attention="uniform")
    return XCosModel(backbone, head).eval()


@pytest.fixture(scope="module")
def faces(tiny_synth) -> list[torch.Tensor]:
    from xcos.data.images import read_face, to_tensor

    paths = sorted((tiny_synth / "train").glob("*/*.png"))[::4]
    return [to_tensor(read_face(path, SIZE))[None] for path in paths]


@torch.no_grad()
def xcos_difference(model, face_a, face_b) -> np.ndarray:
    out = model.compare(*split_descriptors(model.embed(torch.cat([face_a, face_b]))))
    return out["difference"][0].numpy()


def constant(model, face_a, face_b) -> np.ndarray:
    return np.ones((GRID, GRID))


def make_random(seed: int):
    rng = np.random.default_rng(seed)
    return lambda model, face_a, face_b: rng.standard_normal((GRID, GRID))


def pixel_change(model, face_a, face_b) -> np.ndarray:
    change = (face_a - face_b).abs().sum(dim=1)[0]
    spans = pixel_spans(grid_edges(model.backbone))
    return np.array([[float(change[y0:y1, x0:x1].sum()) for x0, x1 in spans] for y0, y1 in spans])


def scores(face_a, face_b) -> dict[str, float]:
    return {"pixels": float((face_a - face_b).abs().mean())}


def test_independent_cells_hit_every_swap_and_trivial_maps_do_not(local_model, faces):
    # A against itself, one region taken from another face: only the swapped cells change.
    triples = [(face, face, faces[(k + 3) % len(faces)]) for k, face in enumerate(faces[:6])]
    masks = region_masks("arcface", SIZE)
    spans = pixel_spans(grid_edges(local_model.backbone))
    methods = {"xcos": xcos_difference, "constant": constant, "pixels": pixel_change}
    game = play_swap_game(local_model, triples, masks, spans, methods, scores)
    assert game.results["xcos"].rate() == 1.0
    assert game.results["constant"].rate() == 0.0
    assert game.results["pixels"].rate() == 1.0  # nothing but the swap differs here
    assert set(game.drops) == set(masks) and all(len(v["pixels"]) == 6 for v in game.drops.values())


def test_pointing_game_known_answers(local_model, faces):
    mask = region_masks("arcface", SIZE)["mouth"]
    pairs = [
        OneRegionPair(face, paste(face, faces[(k + 1) % len(faces)], mask), "mouth")
        for k, face in enumerate(faces[:6])
    ]
    spans = pixel_spans(grid_edges(local_model.backbone))
    methods = {"xcos": xcos_difference, "constant": constant}
    results, chance = play_pointing_game(local_model, pairs, spans, methods)
    assert results["xcos"].rate("mouth") == 1.0
    assert results["constant"].rate() == 0.0
    assert 0.0 < np.mean(chance["mouth"]) < 0.25


def test_a_random_map_scores_at_chance(local_model, faces):
    # Two different faces as the pair: the unmodified pair has natural differences too.
    triples = [
        (faces[k], faces[(k + 1) % len(faces)], faces[(k + 2) % len(faces)])
        for k in range(len(faces))
    ] * 8
    masks = region_masks("arcface", SIZE)
    spans = pixel_spans(grid_edges(local_model.backbone))
    game = play_swap_game(local_model, triples, masks, spans, {"random": make_random(0)}, scores)
    expected = np.mean([c for values in game.chance.values() for c in values])
    hits = game.results["random"]
    spread = np.sqrt(expected * (1 - expected) / hits.count())
    assert abs(hits.rate() - expected) < 4 * spread


def test_favourite_cell_flags_a_map_that_ignores_the_pair(local_model, faces):
    def fixed_peak(model, face_a, face_b) -> np.ndarray:
        peak = np.zeros((GRID, GRID))
        peak[2, 3] = 1.0
        return peak

    triples = [
        (faces[k], faces[(k + 1) % len(faces)], faces[(k + 2) % len(faces)]) for k in range(6)
    ]
    masks = region_masks("arcface", SIZE)
    spans = pixel_spans(grid_edges(local_model.backbone))
    methods = {"fixed": fixed_peak, "random": make_random(1)}
    game = play_swap_game(local_model, triples, masks, spans, methods, scores)
    assert game.original_cells["fixed"] == [2 * GRID + 3] * 6
    assert favourite_cell_share(game.original_cells["fixed"]) == 1.0
    assert game.results["fixed"].rate() == 0.0
    assert favourite_cell_share(game.original_cells["random"]) < 0.5
    assert favourite_cell_share([1, None, None, 2]) == 0.5
