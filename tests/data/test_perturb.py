"""B*, the perturbed partner face (data.perturb), and the losses that read it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xcos.config import PerturbSettings
from xcos.data.image_folder import ImageFolderPairs
from xcos.data.perturb import pixel_box
from xcos.errors import ConfigError
from xcos.losses import CoveredAttention, Locality, MeanSquaredError, Pointing
from xcos.models.geometry import box_coverage

HALVES = torch.tensor([0.0, 0.5, 1.0])  # the edges of a 2x2 grid of equal cells


@pytest.fixture
def pairs(tiny_synth) -> ImageFolderPairs:
    dataset = ImageFolderPairs(str(tiny_synth / "train"), image_size=64, flip=True, seed=0)
    dataset.perturb = PerturbSettings(paste=0.5, side=(0.2, 0.4), variants=4, seed=1)
    return dataset


def test_items_carry_b_star_changed_only_inside_its_box(pairs):
    kinds = set()
    for index in range(12):
        item = pairs[(0, index)]
        box = item["perturb_box"].numpy()
        x0, y0, x1, y1 = pixel_box(tuple(box), 64)
        changed = (item["image_perturbed"] - item["image_b"]).abs().sum(dim=0) > 1e-6
        outside = changed.clone()
        outside[y0:y1, x0:x1] = False
        assert not outside.any(), "B* differs from B outside its box"
        assert changed[y0:y1, x0:x1].float().mean() > 0.3  # and really inside it
        assert item["perturb_paste"] + item["perturb_cover"] == 1
        kinds.add(int(item["perturb_paste"]))
    assert kinds == {0, 1}  # both kinds occur


def test_perturbations_are_pure_functions_of_seed_epoch_and_index(pairs):
    first, again = pairs[(3, 5)], pairs[(3, 5)]
    for key in ("image_perturbed", "perturb_box", "perturb_paste"):
        assert torch.equal(first[key], again[key])
    boxes = {tuple(pairs[(epoch, 5)]["perturb_box"].tolist()) for epoch in range(6)}
    assert len(boxes) > 1  # epochs pick other variants


def test_a_flipped_b_gets_the_mirrored_box(pairs):
    # perturbation drawn on the unflipped face, then flipped with it: the box mirrors
    face = pairs.perturbed_face(7, 2, flip=False)
    mirrored = pairs.perturbed_face(7, 2, flip=True)
    assert torch.equal(face.flip(-1), mirrored)


def test_pasted_donors_are_other_identities(pairs):
    for index in range(0, len(pairs), 3):
        for variant in range(4):
            pasted, _, donor, _ = pairs.perturbation(index, variant)
            if pasted:
                assert pairs.labels[donor] != pairs.labels[index]


def test_settings_are_checked():
    with pytest.raises(ConfigError, match=r"data\.perturb\.side"):
        PerturbSettings(side=(0.5, 0.2))
    with pytest.raises(ConfigError, match=r"data\.perturb\.paste"):
        PerturbSettings(paste=1.5)


def test_box_coverage_is_the_covered_fraction_of_each_cell():
    coverage = box_coverage(torch.tensor([[0.0, 0.0, 0.75, 0.5]]), HALVES)
    np.testing.assert_allclose(coverage[0].numpy(), [[1.0, 0.5], [0.0, 0.0]])
    uneven = torch.tensor([0.0, 0.25, 1.0])  # a narrow first cell: 0.125 is half of it
    coverage = box_coverage(torch.tensor([[0.0, 0.125, 0.25, 0.625]]), uneven)
    np.testing.assert_allclose(coverage[0].numpy(), [[0.5, 0.0], [0.5, 0.0]])


def test_locality_loss_on_hand_made_maps():
    loss = Locality(margin=0.5)
    covered = box_coverage(torch.tensor([[0.0, 0.0, 0.5, 0.5]]), HALVES)  # cell (0, 0) of 2x2
    perfect = torch.tensor([[[0.2, 1.0], [1.0, 1.0]]])
    leaky = torch.tensor([[[0.2, 0.6], [1.0, 1.0]]])  # a cell the covered never touched moved
    unmoved = torch.tensor([[[0.9, 1.0], [1.0, 1.0]]])  # the pasted cell did not drop
    assert loss.compute(perfect, covered) == 0
    assert loss.compute(leaky, covered) == pytest.approx(0.4 / 4)
    assert loss.compute(unmoved, covered) == pytest.approx(0.4 / 4)


def test_pointing_loss_prefers_the_difference_on_the_pasted_cells():
    loss = Pointing()
    covered = box_coverage(torch.tensor([[0.5, 0.5, 1.0, 1.0]]), HALVES)  # cell (1, 1)
    there = torch.tensor([[[0.01, 0.01], [0.01, 0.5]]])
    elsewhere = torch.tensor([[[0.5, 0.01], [0.01, 0.01]]])
    assert loss.compute(there, covered) < loss.compute(elsewhere, covered)


def test_a_box_is_not_a_map_target():
    box = torch.tensor([[0.5, 0.5, 1.0, 1.0]])  # [B, 4], which would broadcast silently
    with pytest.raises(ConfigError, match=r"'perturb_box' is \[1, 4\], not a map"):
        Pointing(target="perturb_box")(
            {"perturbed_difference": torch.rand(1, 2, 2)},
            {"perturb_box": box, "perturb_paste": torch.ones(1), "label": torch.ones(1)},
        )


def test_losses_read_only_the_flagged_rows():
    mse = MeanSquaredError("out", "target", where=["flag", "label"])
    outputs = {"out": torch.tensor([1.0, 5.0, 9.0]), "target": torch.zeros(3)}
    batch = {"flag": torch.tensor([1.0, 1.0, 0.0]), "label": torch.tensor([1, 0, 1])}
    assert mse(outputs, batch) == pytest.approx(1.0)  # only row 0 has both flags
    none = {"flag": torch.zeros(3), "label": torch.ones(3)}
    assert mse(outputs, none) == 0
    with pytest.raises(ConfigError, match="perturb"):  # a config mistake: exit 2
        mse(outputs, {"flag": torch.ones(3)})


def test_covered_attention_loss_wants_the_covered_cells_to_lose_weight():
    loss = CoveredAttention(ratio=0.5)
    before = torch.full((1, 2, 2), 0.25)
    batch = {"perturb_cover": torch.ones(1)}
    coverage = box_coverage(torch.tensor([[0.0, 0.0, 0.5, 0.5]]), HALVES)
    kept = {
        "perturbed_attention": before.clone(),
        "attention": before,
        "perturb_coverage": coverage,
    }
    halved = {**kept, "perturbed_attention": torch.tensor([[[0.1, 0.3], [0.3, 0.3]]])}
    assert loss(kept, batch) == pytest.approx(np.log(2.0), abs=1e-5)
    assert loss(halved, batch) == 0
