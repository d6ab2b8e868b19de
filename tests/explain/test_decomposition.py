"""Exact decompositions of a cosine over the grid cells, and the attention's norm prior."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import require_dlib_weights
from xcos.config import ModelConfig, from_dict
from xcos.explain.decomposition import decompose, supports_decomposition
from xcos.models.xcos_head import XCosHead
from xcos.models.xcos_model import build_model, split_descriptors


def model_of(backbone: dict, **model_keys):
    torch.manual_seed(0)
    config = {"backbone": backbone, "head": {"type": "xcos"}, **model_keys}
    return build_model(from_dict(ModelConfig, config, "model")).eval()


def compared(model, faces_a, faces_b):
    with torch.no_grad():
        return model.compare(*split_descriptors(model.embed(torch.cat([faces_a, faces_b]))))


def test_the_flattened_grid_cosine_splits_exactly_over_the_cells():
    model = model_of({"type": "ir_se", "depth": 10, "width": 0.25, "input_size": 64})
    faces = torch.rand(6, 3, 64, 64) * 2 - 1
    similarity, difference = decompose(model, faces[:3], faces[3:])
    cos = compared(model, faces[:3], faces[3:])["cos"]
    torch.testing.assert_close(similarity.sum(dim=(1, 2)), cos, atol=1e-5, rtol=0)
    torch.testing.assert_close(difference.sum(dim=(1, 2)), 1 - cos, atol=1e-5, rtol=0)
    assert (difference >= -1e-7).all()  # a squared distance per cell for this layout
    swapped = decompose(model, faces[3:], faces[:3])
    torch.testing.assert_close(swapped[1], difference, atol=1e-6, rtol=0)  # symmetric


def test_dlib_level_1_embedding_splits_exactly_over_its_cells():
    require_dlib_weights()
    model = model_of({"type": "dlib_resnet", "level": 1, "weights": "auto"}, cos="embedding")
    faces = torch.rand(4, 3, 150, 150) * 2 - 1
    with torch.no_grad():
        out = model.backbone(faces)
        cells = model.backbone.cell_contributions(out["grid"])
    torch.testing.assert_close(cells.sum(dim=(2, 3)), out["embedding"], atol=1e-5, rtol=1e-4)
    similarity, difference = decompose(model, faces[:2], faces[2:])
    cos = compared(model, faces[:2], faces[2:])["cos"]
    torch.testing.assert_close(similarity.sum(dim=(1, 2)), cos, atol=1e-5, rtol=0)
    torch.testing.assert_close(difference.sum(dim=(1, 2)), 1 - cos, atol=1e-5, rtol=0)


def test_no_decomposition_through_a_non_linear_tail():
    model = model_of({"type": "dlib_resnet", "level": 2, "weights": None}, cos="embedding")
    assert not supports_decomposition(model)
    with pytest.raises(ValueError, match="not linear in the grid cells"):
        decompose(model, torch.zeros(1, 3, 150, 150), torch.zeros(1, 3, 150, 150))


def test_norm_prior_adds_the_log_of_the_cells_feature_norms_to_the_logits():
    torch.manual_seed(0)
    plain = XCosHead(16, grid_channels=8, norm_prior=False).eval()
    prior = XCosHead(16, grid_channels=8, norm_prior=True).eval()
    prior.load_state_dict(plain.state_dict())
    grid_a, grid_b = torch.randn(2, 8, 4, 4), torch.randn(2, 8, 4, 4)
    with torch.no_grad():
        base = torch.log(plain.attention_map(grid_a, grid_b))  # log-softmax of the logits
        expected = torch.softmax(
            (base + torch.log(grid_a.norm(dim=1) * grid_b.norm(dim=1) + 1e-6)).flatten(1), dim=1
        ).reshape(2, 4, 4)
        attention = prior.attention_map(grid_a, grid_b)
        reversed_order = prior.attention_map(grid_b, grid_a)
    torch.testing.assert_close(attention, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(attention, reversed_order)  # still symmetric
