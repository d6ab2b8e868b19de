"""IR / IR-SE backbones: shapes, gradients, checkpoint key layout, argument checks."""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

import pytest
import torch

import xcos.models.backbones  # noqa: F401  (registers the backbones)
from xcos.errors import ConfigError
from xcos.registry import BACKBONES

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("XCOS_SHARED", REPO.parent / "shared"))
KEYS_FILE = SHARED / "docs" / "checkpoint-keys.json"

# (depth, width, embedding_dim) run for every registered backbone; deep ones are narrow.
COMBOS = [
    (10, 0.25, 32),
    (18, 0.5, None),
    (34, 0.25, 64),
    (100, 0.25, 16),
    (152, 0.25, None),
]
# Full width depth 50 is run once only (it is the slowest case: marked slow).
FULL_WIDTH_NAME = "ir_se"


def _cases() -> list:
    # The IResNet family: every registered backbone taking depth / width (dlib_resnet is a
    # fixed network with its own tests in test_dlib.py).
    names = [
        name
        for name in BACKBONES.names()
        if {"depth", "width"} <= set(inspect.signature(BACKBONES.get(name)).parameters)
    ]
    cases = [(name, *combo) for name in names for combo in COMBOS]
    full_width = FULL_WIDTH_NAME if FULL_WIDTH_NAME in names else names[0]
    return [*cases, pytest.param(full_width, 50, 1.0, 512, marks=pytest.mark.slow)]


@pytest.mark.parametrize(("name", "depth", "width", "embedding_dim"), _cases())
def test_forward_backward(name: str, depth: int, width: float, embedding_dim: int | None) -> None:
    torch.manual_seed(0)
    cfg = {"type": name, "depth": depth, "width": width, "embedding_dim": embedding_dim}
    model = BACKBONES.build(cfg, "model.backbone")
    model.train()
    x = torch.randn(2, 3, 112, 112)
    out = model(x)

    grid = out["grid"]
    assert grid.shape == (2, model.out_channels, 7, 7)
    assert model.grid_size == 7
    loss = grid.square().mean()
    if embedding_dim is None:
        assert set(out) == {"grid"}
    else:
        assert set(out) == {"grid", "embedding"}
        assert out["embedding"].shape == (2, embedding_dim)
        loss = loss + out["embedding"].square().mean()
    assert torch.isfinite(loss)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname


def _load_reference_keys() -> list[tuple[str, list[int]]]:
    if not KEYS_FILE.is_file():
        message = f"checkpoint key list not found at {KEYS_FILE} (set XCOS_SHARED)"
        if os.environ.get("XCOS_REQUIRE_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    with KEYS_FILE.open() as f:
        return [(k, list(s)) for k, s in json.load(f)["ir_se50_TreB1eN_Backbone"]]


def test_ir_se50_matches_insightface_pytorch_keys() -> None:
    reference = _load_reference_keys()
    model = BACKBONES.build({"type": "ir_se", "depth": 50}, "model.backbone")
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    ref = dict(reference)
    assert len(ref) == len(reference), "duplicate keys in the reference list"
    assert sorted(set(ours) - set(ref)) == []
    assert sorted(set(ref) - set(ours)) == []
    mismatched = {k: (ours[k], ref[k]) for k in ref if ours[k] != ref[k]}
    assert mismatched == {}
    assert model.out_channels == 512 and model.grid_size == 7

    # The plain IR-50 is the same layout without the SE parameters.
    plain = BACKBONES.build({"type": "ir", "depth": 50}, "model.backbone")
    assert set(plain.state_dict()) == {k for k in ref if ".res_layer.5." not in k}


def test_invalid_depth() -> None:
    with pytest.raises(ValueError, match=r"10, 18, 34, 50, 100, 152"):
        BACKBONES.build({"type": "ir_se", "depth": 42}, "model.backbone")


def test_invalid_config_type() -> None:
    with pytest.raises(ConfigError, match=r"model\.backbone\.width"):
        BACKBONES.build({"type": "ir", "width": "wide"}, "model.backbone")


def test_input_size_must_divide_by_16() -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        BACKBONES.build({"type": "ir", "depth": 10, "input_size": 100}, "model.backbone")


def test_input_size_64_gives_grid_4() -> None:
    model = BACKBONES.build(
        {"type": "ir_se", "depth": 10, "width": 0.25, "embedding_dim": 8, "input_size": 64},
        "model.backbone",
    )
    assert model.grid_size == 4
    out = model(torch.randn(2, 3, 64, 64))
    assert out["grid"].shape == (2, model.out_channels, 4, 4)
    assert out["embedding"].shape == (2, 8)


def test_batch_of_one_in_eval_mode() -> None:
    model = BACKBONES.build(
        {"type": "ir_se", "depth": 10, "width": 0.25, "embedding_dim": 16}, "model.backbone"
    ).eval()
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        out = model(x)
    assert out["grid"].shape == (1, model.out_channels, 7, 7)
    assert out["embedding"].shape == (1, 16)
    assert torch.isfinite(out["embedding"]).all()
    # the grid and embedding by hand, layer by layer (not through forward_features)
    by_hand = x
    with torch.no_grad():
        for layer in [*model.input_layer, *model.body]:
            by_hand = layer(by_hand)
        embedding = model.output_layer(by_hand)
    torch.testing.assert_close(out["grid"], by_hand, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["embedding"], embedding, rtol=1e-5, atol=1e-6)


def test_width_scaling_and_no_output_layer() -> None:
    model = BACKBONES.build(
        {"type": "ir_se", "depth": 10, "width": 0.25, "embedding_dim": None}, "model.backbone"
    )
    assert model.out_channels == 128
    assert model.output_layer is None
    assert not any(k.startswith("output_layer.") for k in model.state_dict())
    # SE hidden size stays >= 1 even for the narrowest stage (16 channels // 16 = 1).
    tiny = BACKBONES.build({"type": "ir_se", "depth": 10, "width": 0.1}, "model.backbone")
    assert tiny.input_layer[0].out_channels == 16
    assert tiny.body[0].res_layer[5].fc1.out_channels == 1
