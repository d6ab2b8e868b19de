"""ArcFace / CosFace margin heads against a hand computation, and their numerical safety."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from xcos.models.margin import ArcFace, CosFace, MarginHead
from xcos.registry import IDENTITY_HEADS


def _unit(v: np.ndarray, axis: int) -> np.ndarray:
    return v / np.linalg.norm(v, axis=axis, keepdims=True)


def _small_case(head: MarginHead) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Fixed kernel and embeddings; returns (embedding, labels, cos) with cos computed in numpy.

    Row 2 points almost opposite to its class centre, so for ArcFace (m = 0.5) theta + m > pi.
    """
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(3, 4))
    emb = rng.normal(size=(3, 3)) * 3.0
    emb[2] = -2.5 * _unit(kernel[:, 1], 0) + 0.1 * rng.normal(size=3)
    labels = np.array([0, 3, 1])
    with torch.no_grad():
        head.kernel.copy_(torch.from_numpy(kernel))
    cos = _unit(emb, 1) @ _unit(kernel, 0)
    return torch.from_numpy(emb).float(), torch.from_numpy(labels), cos


def test_arcface_matches_hand_computation() -> None:
    s, m = 64.0, 0.5
    head = ArcFace(3, 4, scale=s, margin=m)
    emb, labels, cos = _small_case(head)
    expected = s * cos
    used_fallback = False
    for i, y in enumerate(labels.tolist()):
        theta = math.acos(cos[i, y])
        if theta + m > math.pi:
            used_fallback = True
            expected[i, y] = s * (cos[i, y] - m * math.sin(m))
        else:
            expected[i, y] = s * math.cos(theta + m)
    assert used_fallback, "the test case must exercise the theta + m > pi fallback"
    logits = head(emb, labels)
    assert logits.shape == (3, 4) and logits.dtype == torch.float32
    np.testing.assert_allclose(logits.detach().numpy(), expected, rtol=1e-5, atol=1e-4)


def test_cosface_matches_hand_computation() -> None:
    s, m = 30.0, 0.35
    head = CosFace(3, 4, scale=s, margin=m)
    emb, labels, cos = _small_case(head)
    expected = s * cos
    for i, y in enumerate(labels.tolist()):
        expected[i, y] = s * (cos[i, y] - m)
    logits = head(emb, labels)
    np.testing.assert_allclose(logits.detach().numpy(), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("head_cls", [ArcFace, CosFace])
def test_no_labels_gives_scaled_cosine(head_cls: type[MarginHead]) -> None:
    head = head_cls(3, 4)
    emb, _, cos = _small_case(head)
    logits = head(emb, None)
    np.testing.assert_allclose(logits.detach().numpy(), head.scale * cos, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(head(emb).detach().numpy(), head.scale * cos, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("head_cls", [ArcFace, CosFace])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_finite_at_cos_plus_minus_one(head_cls: type[MarginHead], sign: float) -> None:
    torch.manual_seed(0)
    head = head_cls(8, 5)
    labels = torch.tensor([0, 2, 4])
    emb = (sign * 3.0 * head.kernel.detach()[:, labels].T).clone().requires_grad_(True)
    logits = head(emb, labels)
    target_cos = head.cosine(emb.detach()).gather(1, labels[:, None])
    assert torch.allclose(target_cos, torch.full_like(target_cos, sign), atol=1e-6)
    assert torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, labels).backward()
    assert torch.isfinite(emb.grad).all()
    assert torch.isfinite(head.kernel.grad).all()


def test_arcface_exact_boundaries_finite() -> None:
    """cos exactly 1 and -1 fed straight into the margin function: finite values and grads."""
    head = ArcFace(4, 2)
    cos = torch.tensor([[1.0], [-1.0], [0.0]], requires_grad=True)
    out = head.target_logit(cos)
    np.testing.assert_allclose(
        out.detach().numpy().ravel(),
        [math.cos(0.5), -1.0 - 0.5 * math.sin(0.5), math.cos(math.pi / 2 + 0.5)],
        atol=2e-3,  # sin is floored at sqrt(1e-6) near |cos| = 1
    )
    out.sum().backward()
    assert torch.isfinite(cos.grad).all()


def test_float32_under_autocast() -> None:
    head = ArcFace(8, 5)
    emb = torch.randn(4, 8).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(emb, torch.tensor([0, 1, 2, 3]))
    assert logits.dtype == torch.float32


def test_registry_build_and_kernel_init() -> None:
    arc = IDENTITY_HEADS.build(
        {"type": "arcface", "embedding_dim": 16, "num_classes": 7}, "model.identity_head"
    )
    cosf = IDENTITY_HEADS.build(
        {"type": "cosface", "embedding_dim": 16, "num_classes": 7, "scale": 20.0},
        "model.identity_head",
    )
    assert isinstance(arc, ArcFace) and isinstance(cosf, CosFace)
    assert (arc.scale, arc.margin) == (64.0, 0.5)
    assert (cosf.scale, cosf.margin) == (20.0, 0.35)
    assert arc.kernel.shape == (16, 7)
    norms = arc.kernel.detach().norm(dim=0)
    assert torch.allclose(norms, torch.ones(7), atol=1e-5)
    logits = arc(torch.randn(3, 16), torch.tensor([0, 6, 3]))
    assert logits.shape == (3, 7)
