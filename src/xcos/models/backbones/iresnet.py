"""ArcFace "improved residual" ResNets (IR and IR-SE) for 112 x 112 aligned faces.

The layout follows InsightFace_Pytorch's ``Backbone`` so that its pretrained IR-SE-50 weights load
without renaming: at depth 50, width 1.0, with SE, ``IResNet.state_dict()`` has exactly the keys
and shapes of that checkpoint (``input_layer.*``, ``body.N.res_layer.*``,
``body.N.shortcut_layer.*``, ``output_layer.*``).

Architecture (all convolutions without bias)::

    input_layer  conv3x3(3 -> c0, stride 1) -> BN -> PReLU                 [B, c0, H, W]
    body         4 stages of units, channels c0/c1/c2/c3 (64/128/256/512 at width 1),
                 the first unit of each stage has stride 2                  [B, c3, H/16, W/16]
    output_layer BN2d -> Dropout -> Flatten -> Linear(c3 * g * g, D) -> BN1d [B, D]

    unit         res_layer:      BN -> conv3x3 -> PReLU -> conv3x3(stride) -> BN [-> SE]
                 shortcut_layer: MaxPool2d(1, stride) if in == out else conv1x1(stride) -> BN
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import nn

from xcos.models.geometry import strided_centres
from xcos.registry import BACKBONES

__all__ = [
    "UNITS_PER_STAGE",
    "IResNet",
    "check_resnet_arguments",
    "init_face_resnet",
    "ir",
    "ir_se",
    "scaled_channels",
]

#: Units per stage for each supported depth.
UNITS_PER_STAGE: dict[int, tuple[int, int, int, int]] = {
    10: (1, 1, 1, 1),
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
    152: (3, 8, 36, 3),
}

_BASE_CHANNELS = (64, 128, 256, 512)
_SE_REDUCTION = 16


def init_face_resnet(module: nn.Module) -> None:
    """Kaiming-normal (fan_out) convs and linears, zero biases, BN 1/0, PReLU 0.25."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.reset_running_stats()
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.PReLU):
            nn.init.constant_(m.weight, 0.25)


def check_resnet_arguments(
    name: str,
    depths: dict[int, tuple[int, ...]],
    depth: int,
    width: float,
    embedding_dim: int | None,
    dropout: float,
    input_size: int,
) -> None:
    """Refuse impossible settings of a face ResNet, naming the value at fault."""
    if depth not in depths:
        allowed = ", ".join(str(d) for d in depths)
        raise ValueError(f"{name} depth must be one of {allowed}; got {depth!r}")
    if not width > 0:
        raise ValueError(f"{name} width must be positive; got {width!r}")
    if input_size <= 0 or input_size % 16 != 0:
        raise ValueError(
            f"{name} input_size must be a positive multiple of 16 (112 -> 7 x 7 grid); "
            f"got {input_size!r}"
        )
    if embedding_dim is not None and embedding_dim <= 0:
        raise ValueError(f"{name} embedding_dim must be positive or None; got {embedding_dim!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"{name} dropout must be in [0, 1); got {dropout!r}")


def scaled_channels(channels: int, width: float) -> int:
    """``channels * width`` rounded to a multiple of 8, at least 16."""
    return max(16, round(channels * width / 8.0) * 8)


class SEModule(nn.Module):
    """Squeeze-excitation: global average pool -> conv1x1 -> ReLU -> conv1x1 -> sigmoid gate.

    ``[B, C, H, W] -> [B, C, H, W]``; parameter names ``fc1``/``fc2`` match InsightFace_Pytorch.
    """

    def __init__(self, channels: int, reduction: int = _SE_REDUCTION) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))
        return x * gate


class IRUnit(nn.Module):
    """One improved-residual unit: ``[B, in, H, W] -> [B, out, H/stride, W/stride]``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, use_se: bool) -> None:
        super().__init__()
        if in_channels == out_channels:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(kernel_size=1, stride=stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        layers: list[nn.Module] = [
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False),
            nn.PReLU(out_channels),
            nn.Conv2d(
                out_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False
            ),
            nn.BatchNorm2d(out_channels),
        ]
        if use_se:
            layers.append(SEModule(out_channels))
        self.res_layer = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class IResNet(nn.Module):
    """IR / IR-SE ResNet returning the spatial grid and, optionally, an embedding.

    Args:
        depth: one of ``UNITS_PER_STAGE`` (10, 18, 34, 50, 100, 152).
        use_se: add squeeze-excitation (reduction 16) at the end of every unit (IR-SE).
        width: channel multiplier (each count rounded to a multiple of 8, at least 16).
        embedding_dim: size of the output-layer embedding; ``None`` builds no output layer.
        dropout: dropout probability inside the output layer.
        input_size: square input side; must be divisible by 16.

    Attributes:
        out_channels: channels ``C`` of the output grid (512 at width 1).
        grid_size: side of the output grid, ``input_size // 16`` (7 for 112).
        embedding_dim: as given (``None`` when there is no output layer).
        face_template: ``"arcface"`` (faces aligned to ArcFace's 5-point template).
    """

    face_template = "arcface"

    def __init__(
        self,
        depth: int = 50,
        use_se: bool = True,
        width: float = 1.0,
        embedding_dim: int | None = 512,
        dropout: float = 0.0,
        input_size: int = 112,
    ) -> None:
        super().__init__()
        check_resnet_arguments(
            "IResNet", UNITS_PER_STAGE, depth, width, embedding_dim, dropout, input_size
        )
        channels = [scaled_channels(c, width) for c in _BASE_CHANNELS]
        self.depth = depth
        self.use_se = use_se
        self.width = width
        self.embedding_dim = embedding_dim
        self.input_size = input_size
        self.grid_size = input_size // 16
        self.out_channels = channels[-1]

        self.input_layer = nn.Sequential(
            nn.Conv2d(3, channels[0], kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(channels[0]),
            nn.PReLU(channels[0]),
        )
        units: list[nn.Module] = []
        in_channels = channels[0]
        for num_units, out_channels in zip(UNITS_PER_STAGE[depth], channels, strict=True):
            for i in range(num_units):
                units.append(IRUnit(in_channels, out_channels, 2 if i == 0 else 1, use_se))
                in_channels = out_channels
        self.body = nn.Sequential(*units)

        self.output_layer: nn.Sequential | None = None
        if embedding_dim is not None:
            self.output_layer = nn.Sequential(
                nn.BatchNorm2d(self.out_channels),
                nn.Dropout(dropout),
                nn.Flatten(),
                nn.Linear(self.out_channels * self.grid_size * self.grid_size, embedding_dim),
                nn.BatchNorm1d(embedding_dim),
            )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """See ``init_face_resnet``."""
        init_face_resnet(self)

    @property
    def grid_layer(self) -> nn.Module:
        """The module whose output is the grid (for hooks such as Grad-CAM's): the last unit."""
        return self.body[-1]

    def cell_centres(self) -> np.ndarray:
        """Pixel centres of the grid cells: four ``conv3x3(stride 2, padding 1)`` stages centre
        cell ``o`` on pixel ``16o`` (see ``xcos.models.geometry``)."""
        return strided_centres(self.grid_size, 16.0, 0.5)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, 3, H, W] -> grid [B, out_channels, H/16, W/16]``."""
        return self.body(self.input_layer(x))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x [B, 3, H, W]`` -> ``{"grid": [B, C, H/16, W/16], "embedding": [B, D]}``.

        ``"embedding"`` is present only when ``embedding_dim`` is not None; it needs
        ``H == W == input_size``. The embedding is not L2-normalised.
        """
        grid = self.forward_features(x)
        out = {"grid": grid}
        if self.output_layer is not None:
            out["embedding"] = self.output_layer(grid)
        return out

    def extra_repr(self) -> str:
        return (
            f"depth={self.depth}, use_se={self.use_se}, width={self.width}, "
            f"out_channels={self.out_channels}, grid_size={self.grid_size}, "
            f"embedding_dim={self.embedding_dim}"
        )


def _build(
    kind: Literal["ir", "ir_se"],
    depth: int,
    width: float,
    embedding_dim: int | None,
    dropout: float,
    input_size: int,
) -> IResNet:
    return IResNet(
        depth=depth,
        use_se=kind == "ir_se",
        width=width,
        embedding_dim=embedding_dim,
        dropout=dropout,
        input_size=input_size,
    )


@BACKBONES.register("ir")
def ir(
    depth: int = 50,
    width: float = 1.0,
    embedding_dim: int | None = 512,
    dropout: float = 0.0,
    input_size: int = 112,
) -> IResNet:
    """IR ResNet (no squeeze-excitation). See :class:`IResNet` for the arguments."""
    return _build("ir", depth, width, embedding_dim, dropout, input_size)


@BACKBONES.register("ir_se")
def ir_se(
    depth: int = 50,
    width: float = 1.0,
    embedding_dim: int | None = 512,
    dropout: float = 0.0,
    input_size: int = 112,
) -> IResNet:
    """IR-SE ResNet (squeeze-excitation, reduction 16). See :class:`IResNet` for the arguments."""
    return _build("ir_se", depth, width, embedding_dim, dropout, input_size)
