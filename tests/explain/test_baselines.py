"""Baseline explainers: shapes, hook hygiene, eval mode, and hand checks of each method."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from xcos.config import load_config
from xcos.explain.baselines import (
    EXPLAINERS,
    GradCAM,
    Occlusion,
    PairExplanation,
    RandomMap,
    XCosContribution,
    default_layer,
    xcos_target,
)
from xcos.models.xcos_model import build_model, split_descriptors
from xcos.registry import BACKBONES

SIZE = 64  # a 4 x 4 grid


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = load_config(
        "configs/demo_synthetic.json", overrides=[f"model.backbone.input_size={SIZE}"]
    )
    return build_model(config.model, num_classes=3)


@pytest.fixture(scope="module")
def pair():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, SIZE, SIZE, generator=generator).unbind(0)


def hook_counts(model) -> list[tuple[int, int, int]]:
    return [
        (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
        for m in model.modules()
    ]


@pytest.mark.parametrize("name", sorted(EXPLAINERS))
@pytest.mark.parametrize("target", [None, xcos_target])
def test_every_method_maps_the_grid_and_restores_the_model(model, pair, name, target):
    model.train()
    before = hook_counts(model)
    explanation = EXPLAINERS[name](target=target).explain(model, *pair)
    assert isinstance(explanation, PairExplanation)
    assert explanation.method == name
    assert explanation.map.shape == (SIZE // 16, SIZE // 16)
    assert np.isfinite(explanation.map).all()
    assert np.isfinite(explanation.score)
    assert model.training
    assert hook_counts(model) == before
    assert all(p.grad is None for p in model.parameters())


def test_batched_and_unbatched_faces_agree(model, pair):
    a, b = pair
    single = XCosContribution().explain(model, a, b)
    batched = XCosContribution().explain(model, a[None], b[None])
    np.testing.assert_allclose(single.map, batched.map, atol=1e-6)
    with pytest.raises(ValueError, match=r"expected one face \[3, S, S\].*got \(2, 3, 64, 64\)"):
        XCosContribution().explain(model, torch.stack(pair), b)


def test_xcos_contribution_sums_to_the_xcos_score(model, pair):
    model.eval()
    explanation = XCosContribution().explain(model, *pair)
    with torch.no_grad():
        descriptors_a, descriptors_b = split_descriptors(model.embed(torch.stack(pair)))
        xcos = float(model.compare(descriptors_a, descriptors_b)["xcos"][0])
    assert explanation.score == pytest.approx(xcos, abs=1e-6)
    assert float(explanation.map.sum()) == pytest.approx(xcos, abs=1e-5)


def test_random_map_is_reproducible_for_a_seed(model, pair):
    first, second = RandomMap(seed=7), RandomMap(seed=7)
    maps = [first.explain(model, *pair).map for _ in range(2)]
    np.testing.assert_array_equal(maps[0], second.explain(model, *pair).map)
    np.testing.assert_array_equal(maps[1], second.explain(model, *pair).map)
    assert not np.array_equal(maps[0], maps[1])
    assert not np.array_equal(maps[0], RandomMap(seed=8).explain(model, *pair).map)


def test_gradcam_maps_are_non_negative_and_not_all_zero(model, pair):
    explanation = GradCAM().explain(model, *pair)
    assert explanation.map_b is not None and explanation.map_b.shape == explanation.map.shape
    both = np.stack([explanation.map, explanation.map_b])
    assert (both >= 0).all()
    assert both.max() > 0


def test_gradcam_matches_a_hand_computation(model, pair):
    model.eval()
    # IR-SE names the last unit of its body as its grid_layer, whose output is the grid. The
    # grid is computed here by hand, unit by unit, with no hook and no default_layer.
    assert model.backbone.grid_layer is model.backbone.body[-1]
    assert default_layer(model) is model.backbone.body[-1]
    grid = torch.stack(pair)
    with torch.no_grad():
        for unit in [*model.backbone.input_layer, *model.backbone.body]:
            grid = unit(grid)
    grid.requires_grad_(True)
    descriptors_a, descriptors_b = split_descriptors(model.describe({"features": grid}))
    cos = model.compare(descriptors_a, descriptors_b)["cos"][0]
    (gradient,) = torch.autograd.grad(cos, grid)
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    expected = torch.relu((weights * grid).sum(1)).detach().numpy()
    explanation = GradCAM().explain(model, *pair)
    np.testing.assert_allclose(explanation.map, expected[0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(explanation.map_b, expected[1], rtol=1e-4, atol=1e-6)
    assert explanation.score == pytest.approx(float(cos.detach()), abs=1e-6)


@pytest.mark.parametrize(
    ("backbone", "size"),
    [
        ({"type": "ir_se", "depth": 10, "width": 0.25, "input_size": SIZE}, SIZE),
        ({"type": "iresnet", "depth": 18, "width": 0.25, "input_size": SIZE}, SIZE),
        ({"type": "patch_encoder", "grid": 4, "input_size": SIZE, "width": 0.25}, SIZE),
        ({"type": "dlib_resnet", "level": 1, "weights": None}, 150),
    ],
)
def test_default_layer_outputs_the_grid(backbone, size):
    torch.manual_seed(0)
    network = BACKBONES.build(backbone, "model.backbone").eval()
    layer = default_layer(SimpleNamespace(backbone=network))
    assert layer is network.grid_layer
    caught = []
    handle = layer.register_forward_hook(lambda m, i, o: caught.append(o))
    try:
        with torch.no_grad():
            grid = network(torch.rand(2, 3, size, size) * 2 - 1)["grid"]
    finally:
        handle.remove()
    assert len(caught) == 1 and torch.equal(caught[0], grid)


def test_gradcam_hooks_live_for_the_context_and_go_after(model, pair):
    layer = default_layer(model)
    before = len(layer._forward_hooks), len(layer._backward_hooks)
    with GradCAM(layer=layer) as explainer:
        assert len(layer._forward_hooks) == before[0] + 1  # registered on entry
        explainer.explain(model, *pair)
        explainer.explain(model, *pair)
        assert len(layer._forward_hooks) == before[0] + 1  # kept, not stacked
    assert (len(layer._forward_hooks), len(layer._backward_hooks)) == before


def test_hooks_and_mode_are_restored_after_an_exception(model, pair):
    layer = default_layer(model)
    before = hook_counts(model)
    model.train()

    def failing_target(outputs):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        GradCAM(target=failing_target).explain(model, *pair)
    assert hook_counts(model) == before and model.training
    explainer = GradCAM(target=failing_target, layer=layer)
    with pytest.raises(RuntimeError, match="boom"), explainer:
        explainer.explain(model, *pair)
    assert hook_counts(model) == before and model.training


@pytest.mark.parametrize("fill", ["blur", "mean"])
def test_occlusion_of_an_identical_pair_is_zero(model, pair, fill):
    # Occluding the same cell of two identical faces leaves them identical: score unchanged.
    explanation = Occlusion(fill=fill).explain(model, pair[0], pair[0])
    assert explanation.score == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(explanation.map, 0.0, atol=1e-5)


def test_occlusion_matches_one_cell_occluded_by_hand(model, pair):
    model.eval()
    explainer = Occlusion(fill="mean", batch_size=5)  # splits the 16 cells unevenly
    explanation = explainer.explain(model, *pair)
    assert np.abs(explanation.map).max() > 0
    # IR cells are centred on pixels 16o (+0.5): cell (1, 2) spans rows 8..23, columns 24..39
    occluded = []
    for face in pair:
        face = face.clone()
        face[:, 8:24, 24:40] = face.mean(dim=(1, 2), keepdim=True)
        occluded.append(face)
    with torch.no_grad():
        descriptors_a, descriptors_b = split_descriptors(model.embed(torch.stack(occluded)))
        score = float(model.compare(descriptors_a, descriptors_b)["cos"][0])
    assert explanation.map[1, 2] == pytest.approx(explanation.score - score, abs=1e-5)


def test_occlusion_rejects_an_unknown_fill():
    with pytest.raises(ValueError, match="fill"):
        Occlusion(fill="zeros")


@pytest.mark.parametrize(
    ("backbone", "size", "grid"),
    [
        ({"type": "dlib_resnet", "level": 1, "weights": None}, 150, 4),
        ({"type": "iresnet", "depth": 10, "width": 0.25}, 112, 7),
    ],
)
def test_gradcam_finds_the_grid_layer_of_every_backbone(backbone, size, grid):
    from xcos.config import ModelConfig, from_dict

    torch.manual_seed(0)
    model_cfg = from_dict(ModelConfig, {"backbone": backbone, "head": {"type": "xcos"}}, "model")
    model = build_model(model_cfg)
    faces = torch.rand(2, 3, size, size) * 2 - 1
    explanation = GradCAM().explain(model, faces[0], faces[1])
    assert explanation.map.shape == explanation.map_b.shape == (grid, grid)
