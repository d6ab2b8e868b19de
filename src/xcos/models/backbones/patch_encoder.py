"""A restricted-receptive-field backbone: every grid cell is encoded from its own pixels.

After RRFNet (Ozturk et al., 2025): the face is cut into ``grid x grid`` patches (plus an
optional ``context`` margin of neighbouring pixels), each patch goes through the same small
IR network on its own, and the patch codes form the grid ``[B, C, grid, grid]``. A cell's
features depend on nothing outside its patch, so a map over the cells is local by
construction: a change of the mouth can only change the mouth's cells.

    patch   [3, p + 2 * context, p + 2 * context], p = input_size / grid
    stem    conv3x3 -> BN -> PReLU                                   [c0, p', p']
    units   IR units, every ``stride`` unit halving the side          [c, p' / 2^k, ...]
    code    BN -> flatten -> linear -> BN                             [C]
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xcos.models.backbones.iresnet import IRUnit, init_face_resnet, scaled_channels
from xcos.models.geometry import strided_centres
from xcos.registry import BACKBONES

__all__ = ["PatchEncoder"]

_BASE_CHANNELS = (64, 128, 256)


class CellsToGrid(nn.Module):
    """``[B * g * g, C]`` cell codes (row-major) -> the grid ``[B, C, g, g]``."""

    def __init__(self, grid: int) -> None:
        super().__init__()
        self.grid = grid

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        cells = codes.reshape(-1, self.grid, self.grid, codes.shape[-1])
        return cells.permute(0, 3, 1, 2)


@BACKBONES.register("patch_encoder")
class PatchEncoder(nn.Module):
    """Each grid cell encoded on its own (see the module docstring).

    Args:
        grid: cells per side (7 for the paper's 7x7 grid at 112 px).
        input_size: side of the aligned faces; must be a multiple of ``grid``.
        width: channel multiplier of the per-patch network (64/128/256 at 1.0).
        out_channels: size of each cell's code.
        context: pixels of the neighbouring cells each patch also sees, on every side
            (0: strictly its own pixels; the face border is zero-padded).
        use_se: squeeze-excitation in the units (pooled over the patch only).
    """

    face_template = "arcface"
    embedding_dim = None  # the grid only: no embedding of its own

    def __init__(
        self,
        grid: int = 7,
        input_size: int = 112,
        width: float = 0.5,
        out_channels: int = 128,
        context: int = 0,
        use_se: bool = False,
    ) -> None:
        super().__init__()
        if grid <= 0 or input_size % grid:
            raise ValueError(
                f"patch_encoder: input_size {input_size} must be a multiple of grid {grid}"
            )
        if context < 0:
            raise ValueError(f"patch_encoder: context must be >= 0, got {context}")
        self.grid_size, self.input_size, self.context = grid, input_size, context
        self.out_channels = out_channels
        self.patch = input_size // grid
        channels = [scaled_channels(c, width) for c in _BASE_CHANNELS]
        self.stem = nn.Sequential(
            nn.Conv2d(3, channels[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(channels[0]),
            nn.PReLU(channels[0]),
        )
        units, side, in_channels = [], self.patch + 2 * context, channels[0]
        for out in channels:
            units.append(IRUnit(in_channels, out, 2, use_se))
            units.append(IRUnit(out, out, 1, use_se))
            in_channels, side = out, (side + 1) // 2
        self.units = nn.Sequential(*units)
        self.code = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Flatten(),
            nn.Linear(in_channels * side * side, out_channels),
            nn.BatchNorm1d(out_channels),
        )
        self.to_grid = CellsToGrid(grid)
        init_face_resnet(self)

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S] -> [B * grid * grid, 3, p + 2c, p + 2c]`` (row-major cells)."""
        size = self.patch + 2 * self.context
        padded = F.pad(x, [self.context] * 4)
        cells = padded.unfold(2, size, self.patch).unfold(3, size, self.patch)
        # [B, 3, g, g, size, size] -> [B, g, g, 3, size, size]
        return cells.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, size, size)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, 3, S, S] -> grid [B, out_channels, grid, grid]``."""
        return self.to_grid(self.code(self.units(self.stem(self.patches(x)))))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x [B, 3, S, S] -> {"grid": [B, C, grid, grid]}`` (no embedding of its own)."""
        return {"grid": self.forward_features(x)}

    @property
    def grid_layer(self) -> nn.Module:
        """The module whose output is the grid (Grad-CAM's hook point)."""
        return self.to_grid

    def cell_centres(self) -> np.ndarray:
        """Pixel centres of the grid cells: the centres of the equal patches they encode."""
        return strided_centres(self.grid_size, float(self.patch), self.patch / 2)

    def extra_repr(self) -> str:
        return (
            f"grid={self.grid_size}, patch={self.patch}, context={self.context}, "
            f"out_channels={self.out_channels}"
        )
