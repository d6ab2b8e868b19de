"""The xCos head: patch cosine, attention, score properties."""

import pytest
import torch

from xcos.models.xcos_head import XCosHead, global_cosine, patch_cosine


def grids(batch=3, channels=32, cells=7, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, channels, cells, cells, generator=generator),
        torch.randn(batch, channels, cells, cells, generator=generator),
    )


@pytest.fixture
def head():
    torch.manual_seed(0)
    module = XCosHead(in_channels=64, grid_channels=32)
    # Non-trivial BN statistics so the attention is far from uniform.
    module.train()
    module.attention(*grids(8), True)
    return module.eval()


def test_uniform_attention_gives_mean_of_patch_cosine():
    head = XCosHead(in_channels=64, attention="uniform").eval()
    a, b = grids()
    out = head(a, b)
    assert torch.allclose(out["xcos"], out["patch_cosine"].mean(dim=(1, 2)), atol=1e-6)
    assert torch.allclose(out["attention"], torch.full_like(out["attention"], 1 / 49))


def test_learned_attention_sums_to_one_and_score_is_weighted_sum(head):
    a, b = grids()
    out = head(a, b)
    assert torch.allclose(out["attention"].sum(dim=(1, 2)), torch.ones(3), atol=1e-6)
    assert (out["attention"] >= 0).all()
    assert out["attention"].std() > 0  # not silently uniform
    expected = (out["patch_cosine"] * out["attention"]).sum(dim=(1, 2))
    assert torch.allclose(out["xcos"], expected, atol=1e-6)


def test_scores_in_range(head):
    a, b = grids(batch=16)
    for tensor in (a * 100, b * 1e-3):  # large and tiny features
        out = head(tensor, b)
        assert out["xcos"].abs().max() <= 1.0
        assert out["patch_cosine"].abs().max() <= 1.0
        assert out["cos"].abs().max() <= 1.0
    out = head(a, -a)
    assert torch.allclose(out["xcos"], -torch.ones(16), atol=1e-5)


def test_symmetric_mode_does_not_depend_on_order(head):
    a, b = grids()
    assert torch.allclose(head(a, b)["xcos"], head(b, a)["xcos"], atol=1e-6)
    assert torch.allclose(head(a, b)["attention"], head(b, a)["attention"], atol=1e-6)


def test_asymmetric_mode_depends_on_order(head):
    head.symmetric = False
    a, b = grids()
    assert not torch.allclose(head(a, b)["attention"], head(b, a)["attention"], atol=1e-4)


def test_identical_inputs_score_one(head):
    a, _ = grids()
    out = head(a, a)
    assert torch.allclose(out["xcos"], torch.ones(3), atol=1e-6)
    assert torch.allclose(out["cos"], torch.ones(3), atol=1e-6)


def test_batch_of_one_and_hand_computed_cosine(head):
    a, b = grids(batch=1)
    out = head(a, b)
    assert out["xcos"].shape == (1,)
    assert out["patch_cosine"].shape == (1, 7, 7)
    cell = torch.nn.functional.cosine_similarity(a[0, :, 2, 3], b[0, :, 2, 3], dim=0)
    assert torch.allclose(patch_cosine(a, b)[0, 2, 3], cell, atol=1e-6)
    flat = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)
    assert torch.allclose(global_cosine(a, b)[0], flat, atol=1e-6)


def test_detached_cosine_path_trains_only_the_attention(head):
    a, b = grids()
    a.requires_grad_(True)
    head.train()
    head.detach_cosine = True
    out = head(a, b)
    torch.autograd.grad(out["xcos"].sum(), a)  # reaches a through the attention only
    assert not out["patch_cosine"].requires_grad  # the cosine map is cut from the graph
    head.detach_cosine = False
    out = head(a, b)
    assert torch.autograd.grad(out["patch_cosine"].sum(), a)[0].abs().sum() > 0


def test_grid_hidden_adds_a_per_cell_layer_and_keeps_cells_local():
    head = XCosHead(in_channels=24, grid_channels=8, grid_hidden=16).eval()
    assert head.grid[0].weight.shape == (16, 24, 1, 1)
    features = torch.randn(2, 24, 4, 4)
    changed = features.clone()
    changed[:, :, 1, 2] += 5.0
    with torch.no_grad():
        before, after = head.grid_features(features), head.grid_features(changed)
    moved = (before - after).abs().amax(dim=(0, 1))
    assert moved[1, 2] > 0 and moved.sum() == moved[1, 2]  # only the changed cell moves
    assert set(XCosHead(in_channels=24).state_dict()) >= {"grid.0.weight", "grid.1.weight"}
