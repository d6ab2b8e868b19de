"""dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1``) in PyTorch.

A layer-for-layer port: with the released weights its 128-d descriptors equal dlib's
``face_recognition_model_v1.compute_face_descriptor`` to float32 rounding. For a 150 x 150 chip::

    stem    con 7x7/2 (no padding) -> affine -> relu -> max_pool 3x3/2 (no padding)  [32, 35, 35]
    level4  3 residual blocks                                                       [32, 35, 35]
    level3  1 down-sampling + 3 residual blocks                                     [64, 17, 17]
    level2  1 down-sampling + 2 residual blocks                                    [128, 8, 8]
    level1  1 down-sampling + 2 residual blocks                                    [256, 4, 4]
    level0  1 down-sampling block                                                   [256, 2, 2]
    head    mean over the map -> fc 256 -> 128 without bias                         [128]

    block   con 3x3/s -> affine -> relu -> con 3x3/1 -> affine; out = relu(shortcut + block)
            shortcut: the input, or avg_pool 2x2/2 of it (no padding) when s = 2

``affine`` is dlib's batch norm folded into a fixed per-channel ``scale * x + shift``. dlib pads
``k // 2`` only when the stride is 1, and its ``add_prev`` adds tensors of different shapes by
zero-padding the smaller one at the end of the channels, rows and columns; the port does both.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xcos.cache import cache_root
from xcos.checkpoints import load_weights_file, write_checkpoint
from xcos.errors import ConfigError
from xcos.io_utils import file_sha256
from xcos.models.dlib_format import (
    DLIB_MEANS,
    EMBEDDING_DIM,
    INPUT_SIZE,
    LEVELS,
    STEM_CHANNELS,
    STEM_KERNEL,
    DlibResNetWeights,
    find_dlib_weights,
    read_dlib_resnet,
)
from xcos.models.geometry import strided_centres
from xcos.registry import BACKBONES

__all__ = ["Affine", "DlibResNet", "cached_dlib_weights", "convert_dlib_weights"]

#: Which level's map is the xCos grid: level -> (channels, side) for a 150 x 150 input.
GRID_LEVELS = {2: (128, 8), 1: (256, 4)}
_LEVEL_NAMES = [name for name, *_ in LEVELS]


class Affine(nn.Module):
    """dlib's ``affine_``: ``[B, C, H, W] -> scale[c] * x + shift[c]`` (batch norm folded)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def add_prev(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev`` of ``[B, C, H, W]`` maps: the sum on the larger size in each
    dimension, the smaller operand zero-padded at the end of channels, rows and columns."""
    if a.shape == b.shape:
        return a + b
    size = [max(p, q) for p, q in zip(a.shape[1:], b.shape[1:], strict=True)]

    def padded(t: torch.Tensor) -> torch.Tensor:
        channels, rows, cols = (s - d for s, d in zip(size, t.shape[1:], strict=True))
        return F.pad(t, (0, cols, 0, rows, 0, channels))

    return padded(a) + padded(b)


def _conv(in_channels: int, out_channels: int, kernel: int, stride: int) -> nn.Conv2d:
    # dlib pads kernel // 2 only for stride 1: its stride-2 convolutions are unpadded.
    padding = kernel // 2 if stride == 1 else 0
    return nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding)


class ResidualBlock(nn.Module):
    """dlib's ``ares`` (stride 1) or ``ares_down`` (stride 2):
    ``[B, in, H, W] -> [B, out, H', W']`` with ``H' = H`` or ``(H - 2) // 2 + 1``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv1 = _conv(in_channels, out_channels, 3, stride)
        self.affine1 = Affine(out_channels)
        self.conv2 = _conv(out_channels, out_channels, 3, 1)
        self.affine2 = Affine(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        shortcut = F.avg_pool2d(x, 2, 2) if self.stride == 2 else x
        # Down-sampling blocks of level1 / level0 make a 3x3 (1x1) branch against a 4x4 (2x2)
        # shortcut, and every down-sampling block doubles channels (but level0's): add_prev pads.
        return F.relu(add_prev(shortcut, branch))


def _level(in_channels: int, channels: int, blocks: int, halves: bool) -> nn.Sequential:
    strides = [2 if halves and i == 0 else 1 for i in range(blocks)]
    ins = [in_channels] + [channels] * (blocks - 1)
    return nn.Sequential(
        *(ResidualBlock(i, channels, s) for i, s in zip(ins, strides, strict=True))
    )


#: Run in float32 even under bf16/fp16 autocast: the first layer (raw pixels in) and the
#: last level with the fc (the descriptor out), 9% of the network's FLOPs. On LFW View 2
#: (bench/evaluate_lfw.py, doc/performance.md) bf16 everywhere moves the scores by up to
#: 1.8e-3; with these in float32, by up to 1.1e-3, at the same speed.
FLOAT32_MODULES = ("stem", "level0", "fc")


@BACKBONES.register("dlib_resnet")
class DlibResNet(nn.Module):
    """dlib's face ResNet returning an xCos grid and dlib's 128-d descriptor.

    Args:
        level: which map is the grid: 2 -> [B, 128, 8, 8], 1 -> [B, 256, 4, 4].
        weights: ``"auto"``: the installed face-recognition-models .dat, converted once into
            the cache (``$XCOS_CACHE/dlib``, default ``~/.cache/xcos/dlib``); a ``.dat`` path:
            parsed directly; a ``.pth`` path: a state dict from :func:`convert_dlib_weights`;
            ``None``: random initialisation (tests).

    Input: ``[B, 3, 150, 150]`` RGB normalised as ``(x / 255 - 0.5) / 0.5`` (xcos' ``to_tensor``)
    of dlib chips (``face_template = "dlib"``); it is mapped back to dlib's own normalisation,
    ``(pixel - mean[c]) / 256``, with the means stored in the file (buffer ``means``).
    """

    input_size = INPUT_SIZE
    embedding_dim = EMBEDDING_DIM
    face_template = "dlib"

    def __init__(self, level: int = 2, weights: str | None = "auto") -> None:
        super().__init__()
        if level not in GRID_LEVELS:
            allowed = " or ".join(str(k) for k in GRID_LEVELS)
            raise ValueError(f"DlibResNet level must be {allowed}; got {level!r}")
        self.level = level
        self.out_channels, self.grid_size = GRID_LEVELS[level]
        self.register_buffer("means", torch.tensor(DLIB_MEANS, dtype=torch.float32))
        self.stem = nn.Sequential(
            _conv(3, STEM_CHANNELS, STEM_KERNEL, 2),
            Affine(STEM_CHANNELS),
            nn.ReLU(),
            nn.MaxPool2d(3, 2),  # unpadded, like every stride-2 layer of dlib
        )
        channels = STEM_CHANNELS
        for name, width, blocks, halves in LEVELS:
            self.add_module(name, _level(channels, width, blocks, halves))
            channels = width
        self.fc = nn.Linear(channels, EMBEDDING_DIM, bias=False)
        if weights is not None:
            self._load(weights)

    def _load(self, weights: str) -> None:
        if weights == "auto":
            load_weights_file(self, cached_dlib_weights(), "dlib_resnet weights", "DlibResNet")
        elif str(weights).endswith(".dat"):
            self.load_dlib_weights(read_dlib_resnet(weights))
        elif str(weights).endswith(".pth"):
            load_weights_file(self, weights, "dlib_resnet weights", "DlibResNet")
        else:
            raise ConfigError(
                f"DlibResNet weights must be 'auto', a .dat or .pth path, or None; got {weights!r}"
            )

    def load_dlib_weights(self, params: DlibResNetWeights) -> None:
        """Copy parsed .dat parameters in; convs and affines are consumed in forward order."""
        convs = [m for m in self.modules() if isinstance(m, nn.Conv2d)]
        affines = [m for m in self.modules() if isinstance(m, Affine)]
        if len(convs) != len(params.conv_weights) or len(affines) != len(params.affine_scales):
            raise ValueError("parsed dlib weights do not match DlibResNet's layer count")
        with torch.no_grad():
            for conv, weight, bias in zip(
                convs, params.conv_weights, params.conv_biases, strict=True
            ):
                conv.weight.copy_(torch.from_numpy(weight))
                conv.bias.copy_(torch.from_numpy(bias))
            for affine, scale, shift in zip(
                affines, params.affine_scales, params.affine_shifts, strict=True
            ):
                affine.weight.copy_(torch.from_numpy(scale))
                affine.bias.copy_(torch.from_numpy(shift))
            self.fc.weight.copy_(torch.from_numpy(params.fc_weight))
            self.means.copy_(torch.from_numpy(params.means))

    @property
    def grid_layer(self) -> nn.Module:
        """The module whose output is the grid (for hooks such as Grad-CAM's)."""
        return self.get_submodule(f"level{self.level}")

    def _dlib_input(self, x: torch.Tensor) -> torch.Tensor:
        """xcos normalisation ``pixel / 127.5 - 1`` -> dlib's ``(pixel - mean[c]) / 256``."""
        pixels = (x + 1.0) * 127.5
        return (pixels - self.means.view(1, 3, 1, 1)) / 256.0

    def _run(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Submodule ``name`` on ``x``; one of ``FLOAT32_MODULES`` in float32 even under
        autocast."""
        module = self.get_submodule(name)
        if name not in FLOAT32_MODULES:
            return module(x)
        with torch.autocast(x.device.type, enabled=False):
            return module(x.to(self.means.dtype))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, 3, 150, 150] -> grid [B, out_channels, grid_size, grid_size]``: the map after
        the last relu of level ``self.level``."""
        x = self._run("stem", self._dlib_input(x))
        for name in _LEVEL_NAMES[: _LEVEL_NAMES.index(f"level{self.level}") + 1]:
            x = self._run(name, x)
        return x

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x [B, 3, 150, 150]`` -> ``{"grid": [B, C, g, g], "embedding": [B, 128]}``.

        ``"embedding"`` is dlib's raw descriptor (not L2-normalised; dlib compares descriptors
        by Euclidean distance, same person below 0.6).
        """
        grid = self.forward_features(x)
        x = grid
        for name in _LEVEL_NAMES[_LEVEL_NAMES.index(f"level{self.level}") + 1 :]:
            x = self._run(name, x)
        return {"grid": grid, "embedding": self._run("fc", x.mean(dim=(2, 3)))}

    def cell_centres(self) -> np.ndarray:
        """Pixel centres of the grid cells. dlib's stride-2 layers are unpadded: a layer of
        kernel ``k`` centres output ``o`` on ``2o + k/2`` of its input, and its down-sampling
        blocks add a 3x3/2 branch to a 2x2/2 average pool. Through the stem and levels,
        level-2 cells are centred near ``16o + 14.5`` (16 px apart). Level 1's first block
        zero-pads its 3x3 branch to 4x4 and two padded blocks follow; measured (which cell a
        small change moves the most, ``tests/models/test_geometry.py``), its cells sit where equal
        37.5-px cells of the 150-px chip do."""
        if self.level == 1:
            return strided_centres(self.grid_size, 37.5, 18.75)
        return strided_centres(self.grid_size, 16.0, 14.5)

    @property
    def linear_tail(self) -> bool:
        """Whether the embedding splits exactly over the grid cells (``cell_contributions``)."""
        return self.level == 1

    def cell_contributions(self, grid: torch.Tensor) -> torch.Tensor:
        """Level-1 map ``[B, 256, 4, 4]`` -> ``[B, 128, 4, 4]``: one vector per cell, summing
        over the cells to the embedding exactly.

        After level 1 come level 0 (``relu(avg_pool(x) + branch)``) and a mean: the 2x2 average
        pool and the mean are linear, and since the map is non-negative (it leaves a relu) the
        relu changes nothing where there is no branch. Level 0's 3x3/2 branch is unpadded on a
        4x4 map, so only its top-left output cell has one, fed by the top-left 3x3 cells: that
        cell's correction (its output minus its pooled input) is shared equally between them.
        Each cell then contributes ``fc(x_c / 16 + correction share)``.
        """
        if self.level != 1:
            raise ValueError(f"cell_contributions needs level 1, this backbone has {self.level}")
        pooled = F.avg_pool2d(grid, 2, 2)  # [B, C, 2, 2]
        correction = self.level0(grid) - pooled  # non-zero only where the branch lands
        # Each output cell (pool + correction) is shared by the 2x2 cells it pools ...
        per_cell = (grid + F.interpolate(correction, scale_factor=2, mode="nearest")) / 16.0
        # ... except the branch's correction, which the top-left 3x3 cells feed.
        top_left = correction[:, :, :1, :1]
        per_cell[:, :, :2, :2] -= top_left / 16.0
        per_cell[:, :, :3, :3] += top_left / 36.0
        return torch.einsum("oc,bchw->bohw", self.fc.weight, per_cell)

    def extra_repr(self) -> str:
        return f"level={self.level}, out_channels={self.out_channels}, grid_size={self.grid_size}"


def convert_dlib_weights(dat: str | Path, out: str | Path) -> Path:
    """Write the .dat's parameters as a plain :class:`DlibResNet` state dict (atomically).

    The result loads with ``DlibResNet(weights=str(out))`` (any ``level``) without numpy parsing.
    """
    model = DlibResNet(weights=None)
    model.load_dlib_weights(read_dlib_resnet(dat))
    out = Path(out)
    write_checkpoint(model.state_dict(), out)
    return out


def cached_dlib_weights(dat: str | Path | None = None) -> Path:
    """The converted state dict of ``dat`` (default: the installed package's .dat), made on
    first use as ``$XCOS_CACHE/dlib/<first 16 hex digits of the .dat's sha256>.pth``."""
    dat = Path(dat) if dat is not None else find_dlib_weights()
    cache = cache_root()
    out = cache / "dlib" / f"{file_sha256(dat)[:16]}.pth"
    if not out.is_file():
        convert_dlib_weights(dat, out)
    return out
