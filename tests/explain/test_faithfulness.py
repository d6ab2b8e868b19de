"""The yardsticks of xcos.explain.faithfulness: rules on hand-made maps and masks, and known
answers (trivial maps score where they must)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xcos.explain.faithfulness import (
    GameResult,
    area,
    chance_of_moving_into,
    cover_cells,
    deletion_insertion,
    most_different_cell,
    moved_into,
    progressive,
    similarity_order,
)
from xcos.explain.regions import (
    FACE_REGIONS,
    box_mask,
    cell_shares,
    change_mass,
    paste,
    region_cells,
    region_masks,
)


def test_most_different_cell_is_the_unique_maximum_or_none():
    assert most_different_cell(np.array([[0.1, 0.9], [0.2, 0.3]])) == 1
    assert most_different_cell(np.array([[0.9, 0.9], [0.2, 0.3]])) is None  # shared maximum
    assert most_different_cell(np.full((3, 3), 0.5)) is None  # a constant map has none


def test_hit_rule_needs_a_move_into_the_region_from_outside():
    cells = np.array([[False, True], [False, False]])
    inside, outside = np.array([[0, 1.0], [0, 0]]), np.array([[1.0, 0], [0, 0]])
    constant = np.zeros((2, 2))
    assert moved_into(outside, inside, cells)  # moved in: a hit
    assert moved_into(constant, inside, cells)  # no most-different cell before: a hit
    assert not moved_into(inside, inside, cells)  # was there already
    assert not moved_into(outside, outside, cells)  # did not move
    assert not moved_into(constant, constant, cells)  # a constant map never hits
    assert not moved_into(inside, outside, cells)  # moved out


def test_chance_of_a_random_map():
    cells = np.zeros((4, 4), dtype=bool)
    cells[1, 1] = True
    assert chance_of_moving_into(cells) == pytest.approx(15 / 16 * 1 / 16)
    rng = np.random.default_rng(0)
    hits = [
        moved_into(rng.standard_normal((4, 4)), rng.standard_normal((4, 4)), cells)
        for _ in range(20000)
    ]
    assert np.mean(hits) == pytest.approx(chance_of_moving_into(cells), abs=0.006)


def test_region_cells_hold_enough_of_the_change():
    spans = [(0, 4), (4, 8)]  # two cells of 4 pixels on each side
    mask = box_mask(8, (2, 0, 5, 2))  # 6 pixels: 4 in cell (0, 0), 2 in cell (0, 1)
    shares = cell_shares(mask, spans)
    np.testing.assert_allclose(shares, [[4 / 6, 2 / 6], [0, 0]])
    np.testing.assert_array_equal(region_cells(mask, spans), [[True, True], [False, False]])
    np.testing.assert_array_equal(
        region_cells(mask, spans, min_share=0.5), [[True, False], [False, False]]
    )
    thin = box_mask(8, (0, 0, 8, 1))  # spread evenly: the largest share is always in
    assert region_cells(thin, spans, min_share=0.9).sum() == 1
    uneven = [(0, 1), (1, 8)]  # cells where the backbone puts them, not equal squares
    np.testing.assert_allclose(cell_shares(mask, uneven), [[0, 0.5], [0, 0.5]])


def test_change_mass_is_where_the_pixels_changed():
    face = torch.zeros(1, 3, 6, 6)
    changed = face.clone()
    changed[0, :, 1, 2] = 0.5
    mass = change_mass(face, changed)
    assert mass.shape == (6, 6) and mass[1, 2] == pytest.approx(1.5) and mass.sum() == 1.5


@pytest.mark.parametrize("template,size", [("arcface", 112), ("dlib", 150)])
def test_region_masks_sit_on_the_template_points(template, size):
    from xcos.data.align import face_template

    masks = region_masks(template, size)
    assert list(masks) == list(FACE_REGIONS)
    points = face_template(template, size)
    for name, point in zip(("left_eye", "right_eye"), points[:2], strict=True):
        x, y = np.round(point).astype(int)
        assert masks[name][y, x] == 1.0 and masks[name].min() == 0.0
    mouth = masks["mouth"]
    x, y = np.round(points[3:].mean(axis=0)).astype(int)
    assert mouth[y, x] == 1.0
    assert masks["left_eye"][:, : size // 2].sum() > 0.95 * masks["left_eye"].sum()
    feathered = masks["nose"][(masks["nose"] > 0) & (masks["nose"] < 1)]
    assert feathered.size > 0  # soft edges


def test_paste_takes_the_region_from_the_donor_at_the_face_mean_colour():
    face = torch.full((3, 8, 8), 0.2)
    donor = torch.full((3, 8, 8), -0.6)
    donor[:, 2, 2] = 0.0  # texture inside the region
    mask = box_mask(8, (1, 1, 4, 4))
    pasted = paste(face, donor, mask)
    assert torch.equal(pasted[:, 0, :], face[:, 0, :])  # outside: untouched
    inside = pasted[:, 1:4, 1:4]
    assert inside.mean().item() == pytest.approx(0.2, abs=1e-6)  # the face's mean colour
    assert pasted[0, 2, 2] > pasted[0, 1, 1]  # the donor's texture


def test_progressive_replaces_one_cell_per_step_in_the_given_order():
    start, source = torch.zeros(1, 3, 8, 8), torch.ones(1, 3, 8, 8)
    steps = progressive(start, source, np.array([3, 0, 2, 1]), [(0, 4), (4, 8)])
    assert steps.shape == (5, 3, 8, 8)
    assert steps[0].sum() == 0 and steps[-1].min() == 1
    assert steps[1][:, 4:, 4:].min() == 1 and steps[1].sum() == 3 * 16  # cell 3: bottom right
    assert steps[2][:, :4, :4].min() == 1 and steps[2].sum() == 3 * 32  # then top left


def test_area_and_order():
    assert area(np.array([1.0, 1.0, 1.0])) == 1.0
    assert area(np.array([1.0, 0.0, 0.0])) == 0.25
    np.testing.assert_array_equal(
        similarity_order(np.array([[0.5, 0.1], [0.9, 0.3]])), [1, 3, 0, 2]
    )


def test_deletion_rewards_the_map_that_finds_the_cells_the_score_rests_on():
    # The score counts how many of B's four cells still hold B's pixels, weighted 4, 3, 2, 1:
    # removing the heaviest cells first (a map ranking them most similar) drops it fastest.
    weights = torch.tensor([4.0, 3.0, 2.0, 1.0])

    def score(faces_a, faces_b):
        kept = faces_b[:, 0, ::4, ::4].reshape(len(faces_b), 4)  # 1 where B's pixels remain
        return (kept * weights).sum(dim=1).numpy()

    face_a = torch.zeros(1, 3, 8, 8)
    face_b, donor = torch.ones(1, 3, 8, 8), torch.zeros(1, 3, 8, 8)
    right = np.array([[-4.0, -3.0], [-2.0, -1.0]])  # difference map: heaviest = least different
    spans = [(0, 4), (4, 8)]
    deletion_right, insertion_right = deletion_insertion(score, face_a, face_b, donor, right, spans)
    deletion_wrong, insertion_wrong = deletion_insertion(
        score, face_a, face_b, donor, -right, spans
    )
    assert deletion_right < deletion_wrong
    assert insertion_right > insertion_wrong


def test_cover_cells_greys_exactly_the_chosen_cells():
    face = torch.ones(1, 3, 8, 8)
    cells = np.array([[False, True], [False, False]])
    covered = cover_cells(face, cells, [(0, 3), (3, 8)])
    assert covered[..., :3, 3:].abs().sum() == 0  # cell (0, 1): rows 0-2, columns 3-7
    assert covered.sum() == face.sum() - 3 * 3 * 5


def test_game_result_rates_by_region():
    result = GameResult()
    for region, hit in (("nose", True), ("nose", False), ("mouth", True)):
        result.add(region, hit)
    assert result.rate("nose") == 0.5 and result.rate() == pytest.approx(2 / 3)
    assert result.count() == 3 and np.isnan(result.rate("eyes"))
