"""The xCos head: grid features, patch-wise cosine map, attention map and their weighted sum."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from xcos.registry import HEADS


def conv_bn_prelu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.PReLU(out_channels),
    )


def patch_cosine(grid_a: torch.Tensor, grid_b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Cosine between the two faces' local features at every cell.

    ``grid_a``, ``grid_b``: [B, C, H, W] -> [B, H, W] in [-1, 1].
    """
    a = F.normalize(grid_a.float(), dim=1, eps=eps)
    b = F.normalize(grid_b.float(), dim=1, eps=eps)
    return (a * b).sum(dim=1).clamp(-1.0, 1.0)


def difference_map(patch_cosine, attention):
    """``attention * (1 - patch_cosine)`` (tensors or arrays, [.., h, w]): how much each cell
    pulls the xCos score down from a perfect match (the cells sum to ``1 - xcos``)."""
    return attention * (1.0 - patch_cosine)


def global_cosine(grid_a: torch.Tensor, grid_b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Plain cosine of the flattened grids (the embeddings the identity head sees): [B]."""
    a = F.normalize(grid_a.flatten(1).float(), dim=1, eps=eps)
    b = F.normalize(grid_b.flatten(1).float(), dim=1, eps=eps)
    return (a * b).sum(dim=1).clamp(-1.0, 1.0)


class AttentionModule(nn.Module):
    """Attention over the grid cells from the two faces' grid features (about 9.5k parameters).

    A shared per-face encoder, then a joint encoder on the concatenation, ending in one
    channel whose softmax over the cells is the attention map.
    """

    def __init__(self, grid_channels: int = 32, hidden_channels: int = 16) -> None:
        super().__init__()
        self.face_encoder = conv_bn_prelu(grid_channels, hidden_channels, 3)
        self.joint = nn.Sequential(
            conv_bn_prelu(2 * hidden_channels, hidden_channels, 3),
            conv_bn_prelu(hidden_channels, 1, 3),
        )

    def logits(self, encoded_a: torch.Tensor, encoded_b: torch.Tensor) -> torch.Tensor:
        """Unnormalised attention for the ordered pair: [B, H, W]."""
        return self.joint(torch.cat([encoded_a, encoded_b], dim=1))[:, 0]

    def forward(
        self,
        grid_a: torch.Tensor,
        grid_b: torch.Tensor,
        symmetric: bool = True,
        prior: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attention map [B, H, W] (sums to 1 over H*W) for grids [B, C, H, W]; ``prior``
        [B, H, W] is added to the logits (symmetric priors keep the map symmetric)."""
        encoded_a, encoded_b = self.face_encoder(grid_a), self.face_encoder(grid_b)
        logits = self.logits(encoded_a, encoded_b)
        if symmetric:
            # Averaging both argument orders before the softmax makes the map, and so the
            # score, independent of which face is "A": a verifier must not depend on order.
            logits = 0.5 * (logits + self.logits(encoded_b, encoded_a))
        if prior is not None:
            logits = logits + prior
        batch, height, width = logits.shape
        return torch.softmax(logits.float().reshape(batch, -1), dim=1).reshape(batch, height, width)


@HEADS.register("xcos")
class XCosHead(nn.Module):
    """Grid head (1x1 conv + BN + PReLU) and the xCos comparison of two faces.

    Args:
        in_channels: channels of the backbone's spatial map (set by the model builder).
        grid_channels: channels of the grid features F (32 in the paper).
        attention: ``learned`` (the attention module) or ``uniform`` (1 / (H*W) per cell).
        attention_channels: hidden channels of the attention module.
        detach_cosine: compute the patch cosine map from detached grid features, so the xCos
            loss trains the attention branch only (the published recipe).
        symmetric: average the attention over both argument orders (score(A,B) == score(B,A)).
        grid_hidden: channels of an extra 1x1 conv + BN + PReLU before the projection (a
            per-cell MLP: each cell still sees only its own features). For a frozen recognizer
            whose spatial map is several layers from its embedding; None: the paper's head.
        norm_prior: add ``log(|F_A| |F_B|)`` of each cell's grid features to the learned
            attention logits, so that the attention starts from how much each cell weighs in
            the cosine of the flattened grids (``|F_A| |F_B| cos`` summed over the cells) and
            a cell with little evidence in either face (a covered one) weighs little.
    """

    def __init__(
        self,
        in_channels: int,
        grid_channels: int = 32,
        attention: Literal["learned", "uniform"] = "learned",
        attention_channels: int = 16,
        detach_cosine: bool = True,
        symmetric: bool = True,
        grid_hidden: int | None = None,
        norm_prior: bool = False,
    ) -> None:
        super().__init__()
        hidden = [] if grid_hidden is None else [*conv_bn_prelu(in_channels, grid_hidden, 1)]
        self.grid = nn.Sequential(
            *hidden,
            nn.Conv2d(grid_hidden or in_channels, grid_channels, 1, bias=False),
            nn.BatchNorm2d(grid_channels),
            nn.PReLU(grid_channels),
        )
        self.attention = (
            AttentionModule(grid_channels, attention_channels) if attention == "learned" else None
        )
        self.grid_channels = grid_channels
        self.detach_cosine = detach_cosine
        self.symmetric = symmetric
        self.norm_prior = norm_prior

    def grid_features(self, spatial_map: torch.Tensor) -> torch.Tensor:
        """Backbone map [B, C_in, H, W] -> grid features F [B, grid_channels, H, W]."""
        return self.grid(spatial_map)

    def attention_map(self, grid_a: torch.Tensor, grid_b: torch.Tensor) -> torch.Tensor:
        """[B, H, W] weights summing to 1 per pair."""
        if self.attention is None:
            batch, _, height, width = grid_a.shape
            return grid_a.new_full((batch, height, width), 1.0 / (height * width)).float()
        prior = None
        if self.norm_prior:
            norms = grid_a.float().norm(dim=1) * grid_b.float().norm(dim=1)
            prior = torch.log(norms + 1e-6)
        return self.attention(grid_a, grid_b, self.symmetric, prior)

    def forward(self, grid_a: torch.Tensor, grid_b: torch.Tensor) -> dict[str, torch.Tensor]:
        """Compare two faces' grid features [B, C, H, W].

        Returns ``patch_cosine`` [B, H, W], ``attention`` [B, H, W], ``xcos`` [B] (their
        weighted sum, in [-1, 1]) and ``cos`` [B] (plain cosine of the flattened grids).
        """
        cos_a, cos_b = (
            (grid_a.detach(), grid_b.detach()) if self.detach_cosine else (grid_a, grid_b)
        )
        cosine_map = patch_cosine(cos_a, cos_b)
        attention = self.attention_map(grid_a, grid_b)
        xcos = (cosine_map * attention).sum(dim=(1, 2)).clamp(-1.0, 1.0)
        return {
            "patch_cosine": cosine_map,
            "attention": attention,
            "xcos": xcos,
            "cos": global_cosine(grid_a, grid_b),
        }
