"""Additive-margin identity heads (ArcFace, CosFace) on L2-normalised embeddings.

Both heads hold a class-centre matrix ``kernel`` of shape ``[embedding_dim, num_classes]``
(InsightFace_Pytorch naming; one column per class) and compute, in float32 even under autocast::

    e   = embedding / ||embedding||                       [N, D]
    w   = kernel / ||kernel||  (per column)               [D, C]
    cos = clamp(e @ w, -1, 1)                             [N, C]

With ``labels=None`` (inference) they return ``scale * cos``. With labels, the target-class entry of
each row is replaced by a margin-penalised cosine before scaling:

* ArcFace: ``cos(theta + m)``, or ``cos(theta) - m * sin(m)`` when ``theta + m > pi``;
* CosFace: ``cos(theta) - m``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from xcos.registry import IDENTITY_HEADS

__all__ = ["ArcFace", "CosFace", "MarginHead"]

#: Floor of ``1 - cos^2`` before the square root (keeps ArcFace gradients finite at |cos| = 1).
SIN_SQ_EPS = 1e-6
#: ``eps`` of the L2 normalisations.
NORM_EPS = 1e-12


class MarginHead(nn.Module):
    """Base class: class-centre matrix and the normalised cosine; subclasses add the margin."""

    def __init__(self, embedding_dim: int, num_classes: int, scale: float, margin: float) -> None:
        super().__init__()
        if embedding_dim <= 0 or num_classes <= 0:
            raise ValueError(
                f"{type(self).__name__}: embedding_dim and num_classes must be positive; "
                f"got {embedding_dim!r}, {num_classes!r}"
            )
        if not scale > 0:
            raise ValueError(f"{type(self).__name__}: scale must be positive; got {scale!r}")
        self.embedding_dim = embedding_dim
        self.num_classes = num_classes
        self.scale = float(scale)
        self.margin = float(margin)
        self.kernel = nn.Parameter(torch.empty(embedding_dim, num_classes))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform(-1, 1), then every column (class centre) scaled to unit L2 norm."""
        with torch.no_grad():
            self.kernel.uniform_(-1.0, 1.0)
            self.kernel.copy_(F.normalize(self.kernel, dim=0, eps=NORM_EPS))

    def cosine(self, embedding: torch.Tensor) -> torch.Tensor:
        """``embedding [N, D] -> cos [N, C]`` in float32, clamped to [-1, 1]."""
        if embedding.dim() != 2 or embedding.shape[1] != self.embedding_dim:
            raise ValueError(
                f"{type(self).__name__}: expected embedding [N, {self.embedding_dim}], "
                f"got {list(embedding.shape)}"
            )
        with torch.autocast(device_type=embedding.device.type, enabled=False):
            e = F.normalize(embedding.float(), dim=1, eps=NORM_EPS)
            w = F.normalize(self.kernel.float(), dim=0, eps=NORM_EPS)
            return (e @ w).clamp(-1.0, 1.0)

    def target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        """Margin-penalised cosine for the target class: ``[N, 1] -> [N, 1]`` (float32)."""
        raise NotImplementedError

    def forward(self, embedding: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled logits.

        Args:
            embedding: ``[N, embedding_dim]`` (any float dtype; need not be normalised).
            labels: ``[N]`` long class indices in ``[0, num_classes)``, or ``None`` for inference.

        Returns:
            ``[N, num_classes]`` float32 logits: ``scale * cos`` with the margin applied to each
            row's target entry when ``labels`` is given.
        """
        cos = self.cosine(embedding)
        with torch.autocast(device_type=embedding.device.type, enabled=False):
            if labels is None:
                return self.scale * cos
            if labels.dim() != 1 or labels.shape[0] != cos.shape[0]:
                raise ValueError(
                    f"{type(self).__name__}: expected labels [{cos.shape[0]}], "
                    f"got {list(labels.shape)}"
                )
            index = labels.long().unsqueeze(1)
            target = self.target_logit(cos.gather(1, index))
            return self.scale * cos.scatter(1, index, target)

    def extra_repr(self) -> str:
        return (
            f"embedding_dim={self.embedding_dim}, num_classes={self.num_classes}, "
            f"scale={self.scale}, margin={self.margin}"
        )


@IDENTITY_HEADS.register("arcface")
class ArcFace(MarginHead):
    """Additive angular margin: target logit ``s * cos(theta + m)`` (default s = 64, m = 0.5).

    When ``theta + m > pi`` (``cos(theta) < cos(pi - m)``) the monotone fallback
    ``cos(theta) - m * sin(m)`` is used instead. ``sin(theta)`` is computed as
    ``sqrt(clamp(1 - cos^2, min=1e-6))`` so forward and backward stay finite at ``|cos| = 1``.
    """

    def __init__(
        self, embedding_dim: int, num_classes: int, scale: float = 64.0, margin: float = 0.5
    ) -> None:
        if not 0.0 <= margin < math.pi:
            raise ValueError(f"ArcFace: margin must be in [0, pi); got {margin!r}")
        super().__init__(embedding_dim, num_classes, scale, margin)
        self.cos_m = math.cos(margin)
        self.sin_m = math.sin(margin)
        self.threshold = math.cos(math.pi - margin)
        self.fallback_offset = margin * math.sin(margin)

    def target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        sin_target = torch.sqrt(torch.clamp(1.0 - cos_target * cos_target, min=SIN_SQ_EPS))
        shifted = cos_target * self.cos_m - sin_target * self.sin_m
        fallback = cos_target - self.fallback_offset
        return torch.where(cos_target > self.threshold, shifted, fallback)


@IDENTITY_HEADS.register("cosface")
class CosFace(MarginHead):
    """Additive cosine margin: target logit ``s * (cos(theta) - m)`` (default s = 30, m = 0.35)."""

    def __init__(
        self, embedding_dim: int, num_classes: int, scale: float = 30.0, margin: float = 0.35
    ) -> None:
        super().__init__(embedding_dim, num_classes, scale, margin)

    def target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        return cos_target - self.margin
