"""What a backbone is to the rest of xcos, written as types.

Every registered backbone (``xcos.registry.BACKBONES``) satisfies :class:`BackboneProtocol`;
the model, the evaluator, the explainers and the geometry read these members directly, with no
fallbacks. A backbone whose embedding splits exactly over its grid cells also satisfies
:class:`DecomposableBackbone`. ``tests/test_registry_sweep.py`` checks every registered
backbone with ``isinstance``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

__all__ = ["BACKBONE_MEMBERS", "BackboneProtocol", "DecomposableBackbone", "missing_members"]

#: The members of :class:`BackboneProtocol` (for error messages and tests).
BACKBONE_MEMBERS = (
    "input_size",
    "face_template",
    "grid_size",
    "out_channels",
    "embedding_dim",
    "grid_layer",
    "cell_centres",
    "forward_features",
    "forward",
)


def missing_members(backbone: object) -> list[str]:
    """The members of :class:`BackboneProtocol` that ``backbone`` lacks."""
    return [name for name in BACKBONE_MEMBERS if not hasattr(backbone, name)]


@runtime_checkable
class BackboneProtocol(Protocol):
    """A face backbone producing the xCos grid.

    Attributes:
        input_size: side ``S`` of the square aligned faces it expects (112, dlib: 150).
        face_template: the alignment template of those faces (``xcos.data.align``:
            ``"arcface"`` or ``"dlib"``).
        grid_size: side ``g`` of its grid of cells.
        out_channels: channels ``C`` of each cell.
        embedding_dim: size ``D`` of its own embedding, ``None`` when it has none.
    """

    input_size: int
    face_template: str
    grid_size: int
    out_channels: int
    embedding_dim: int | None

    @property
    def grid_layer(self) -> nn.Module:
        """The module whose output is the grid (the hook point of Grad-CAM)."""
        ...

    def cell_centres(self) -> np.ndarray:
        """Pixel centres ``[g]`` of the grid cells along one side (``xcos.models.geometry``)."""
        ...

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, 3, S, S] -> grid [B, C, g, g]``."""
        ...

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x [B, 3, S, S] -> {"grid": [B, C, g, g]}``, plus ``"embedding"`` ``[B, D]`` when
        ``embedding_dim`` is not None."""
        ...


@runtime_checkable
class DecomposableBackbone(BackboneProtocol, Protocol):
    """A backbone whose embedding may be linear in its cells (``xcos.explain.decomposition``).

    Attributes:
        linear_tail: whether, in this configuration, the embedding is exactly the sum of
            ``cell_contributions`` over the cells.
    """

    linear_tail: bool

    def cell_contributions(self, grid: torch.Tensor) -> torch.Tensor:
        """``grid [B, C, g, g] -> [B, D, g, g]``: one vector per cell, summing to the
        embedding over the cells."""
        ...
