"""insightface arcface_torch's iResNet, with its parameter names, for its ``backbone.pth`` files.

The module tree reproduces arcface_torch's ``IResNet`` so that its released ``backbone.pth``
state dicts (iresnet18 ... iresnet200) load without renaming: ``conv1``, ``bn1``, ``prelu``,
``layer1`` .. ``layer4`` of ``IBasicBlock``, ``bn2``, ``dropout``, ``fc``, ``features``.
All convolutions are without bias; every BatchNorm uses eps 1e-05 (as arcface_torch does).

Architecture::

    stem     conv3x3(3 -> c0, stride 1) -> BN -> PReLU                     [B, c0, H, W]
    layerN   blocks of IBasicBlock, channels c0/c1/c2/c3 (64/128/256/512 at width 1);
             the first block of every layer has stride 2                  [B, c3, H/16, W/16]
    neck     bn2 (BN2d) -> flatten -> dropout -> fc (Linear) -> features (BN1d)   [B, D]

    block    BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN, plus the shortcut:
             identity, or downsample = conv1x1(stride) -> BN when the shape changes

The xCos grid is the output of ``layer4`` before ``bn2`` (512 x 7 x 7 for 112 x 112 inputs).
Inputs are RGB normalised as ``(x / 255 - 0.5) / 0.5``, as everywhere in xcos.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from xcos.models.backbones.iresnet import (
    _BASE_CHANNELS,
    UNITS_PER_STAGE,
    check_resnet_arguments,
    init_face_resnet,
    scaled_channels,
)
from xcos.models.geometry import strided_centres
from xcos.registry import BACKBONES

__all__ = ["ARCFACE_LAYERS", "ArcFaceIResNet", "IBasicBlock"]

#: Blocks per layer for each depth. 18 ... 200 are arcface_torch's released models; 10 and 152
#: have no arcface_torch checkpoint and exist so that this backbone accepts the same depths as
#: ``ir`` / ``ir_se`` (tiny depth-10 models keep CPU tests fast).
ARCFACE_LAYERS: dict[int, tuple[int, int, int, int]] = UNITS_PER_STAGE | {200: (6, 26, 60, 6)}

_BN_EPS = 1e-05  # arcface_torch's value; the statistics in its checkpoints were computed with it


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """arcface_torch's residual block: ``[B, in, H, W] -> [B, out, H/stride, W/stride]``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, eps=_BN_EPS)
        self.conv1 = _conv3x3(in_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels, eps=_BN_EPS)
        self.prelu = nn.PReLU(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels, stride)
        self.bn3 = nn.BatchNorm2d(out_channels, eps=_BN_EPS)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels, eps=_BN_EPS),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


@BACKBONES.register("iresnet")
class ArcFaceIResNet(nn.Module):
    """arcface_torch iResNet returning the spatial grid and, optionally, the embedding.

    Args:
        depth: one of ``ARCFACE_LAYERS`` (18, 34, 50, 100, 200 have released weights).
        width: channel multiplier (1.0 for released weights; smaller for tiny test models).
        embedding_dim: ``num_features`` of arcface_torch; ``None`` builds no neck
            (no ``bn2`` / ``fc`` / ``features``).
        dropout: dropout probability before ``fc``.
        input_size: square input side; must be divisible by 16 (``fc`` sees the whole grid).

    Attributes:
        out_channels: channels ``C`` of the grid (512 at width 1).
        grid_size: side of the grid, ``input_size // 16`` (7 for 112).
        embedding_dim: as given.
        face_template: ``"arcface"``.
    """

    face_template = "arcface"

    def __init__(
        self,
        depth: int = 50,
        width: float = 1.0,
        embedding_dim: int | None = 512,
        dropout: float = 0.0,
        input_size: int = 112,
    ) -> None:
        super().__init__()
        check_resnet_arguments(
            "iresnet", ARCFACE_LAYERS, depth, width, embedding_dim, dropout, input_size
        )
        channels = [scaled_channels(c, width) for c in _BASE_CHANNELS]
        self.depth = depth
        self.width = width
        self.embedding_dim = embedding_dim
        self.input_size = input_size
        self.grid_size = input_size // 16
        self.out_channels = channels[-1]

        self.conv1 = _conv3x3(3, channels[0])
        self.bn1 = nn.BatchNorm2d(channels[0], eps=_BN_EPS)
        self.prelu = nn.PReLU(channels[0])
        in_channels = channels[0]
        for index, (blocks, out_channels) in enumerate(
            zip(ARCFACE_LAYERS[depth], channels, strict=True), start=1
        ):
            layer = [IBasicBlock(in_channels, out_channels, 2)]
            layer += [IBasicBlock(out_channels, out_channels, 1) for _ in range(blocks - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*layer))
            in_channels = out_channels

        if embedding_dim is not None:
            self.bn2 = nn.BatchNorm2d(self.out_channels, eps=_BN_EPS)
            self.dropout = nn.Dropout(dropout)
            self.fc = nn.Linear(self.out_channels * self.grid_size**2, embedding_dim)
            self.features = nn.BatchNorm1d(embedding_dim, eps=_BN_EPS)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal (fan_out) convs and linears, zero biases, BN 1/0, PReLU 0.25.

        arcface_torch also freezes ``features.weight`` at 1 while training from scratch; here it
        stays trainable, since xcos fine-tunes imported weights rather than reproducing that run.
        """
        init_face_resnet(self)

    @property
    def grid_layer(self) -> nn.Module:
        """The module whose output is the grid (for hooks such as Grad-CAM's)."""
        return self.layer4

    def cell_centres(self) -> np.ndarray:
        """Pixel centres of the grid cells: as for the IR backbones, cell ``o`` is centred on
        pixel ``16o`` (see ``xcos.models.geometry``)."""
        return strided_centres(self.grid_size, 16.0, 0.5)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, 3, H, W] -> grid [B, out_channels, H/16, W/16]`` (layer4 output, before bn2)."""
        x = self.prelu(self.bn1(self.conv1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x [B, 3, H, W]`` -> ``{"grid": [B, C, H/16, W/16], "embedding": [B, D]}``.

        ``"embedding"`` (not L2-normalised) is present only when ``embedding_dim`` is not None;
        it needs ``H == W == input_size``.
        """
        grid = self.forward_features(x)
        out = {"grid": grid}
        if self.embedding_dim is not None:
            flat = self.dropout(torch.flatten(self.bn2(grid), 1))
            out["embedding"] = self.features(self.fc(flat))
        return out

    def extra_repr(self) -> str:
        return (
            f"depth={self.depth}, width={self.width}, out_channels={self.out_channels}, "
            f"grid_size={self.grid_size}, embedding_dim={self.embedding_dim}"
        )
