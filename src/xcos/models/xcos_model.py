"""The composed xCos model: backbone -> grid head -> xCos comparison (+ identity head, target)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from xcos.registry import BACKBONES, HEADS, IDENTITY_HEADS, TARGETS


class XCosModel(nn.Module):
    """Takes and returns dicts.

    Batch keys: ``image_a``, ``image_b`` [B, 3, H, W] (normalised RGB), optional
    ``identity_a``, ``identity_b`` [B] (class indices, for the identity head).

    Output keys: ``patch_cosine``, ``attention`` [B, h, w]; ``xcos``, ``cos`` [B];
    ``target_cos`` [B] (when a target is set); ``logits`` [2B, classes] and ``identity`` [2B]
    (when the identity head is set and identities are in the batch).
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        target: nn.Module | None = None,
        identity_head: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.target = target
        self.identity_head = identity_head

    @property
    def input_size(self) -> int:
        """Side of the square aligned faces the backbone expects."""
        return getattr(self.backbone, "input_size", 112)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Grid features [B, c, h, w] of aligned faces [B, 3, H, W]."""
        return self.head.grid_features(self.backbone.forward_features(images))

    def compare(self, grid_a: torch.Tensor, grid_b: torch.Tensor) -> dict[str, torch.Tensor]:
        """xCos comparison of two batches of grid features (see ``XCosHead.forward``)."""
        return self.head(grid_a, grid_b)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images = torch.cat([batch["image_a"], batch["image_b"]])
        grid_a, grid_b = self.embed(images).chunk(2)  # one backbone pass for both faces
        outputs = dict(self.compare(grid_a, grid_b))
        if self.identity_head is not None and "identity_a" in batch:
            labels = torch.cat([batch["identity_a"], batch["identity_b"]])
            outputs["logits"] = self.identity_head(torch.cat([grid_a, grid_b]).flatten(1), labels)
            outputs["identity"] = labels
        if self.target is not None:
            outputs["target_cos"] = self.target(batch, outputs)
        return outputs

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by part, for separate optimizers or parameter groups."""
        attention = self.head.attention
        attention_ids = {id(p) for p in attention.parameters()} if attention is not None else set()
        groups = {
            "backbone": list(self.backbone.parameters()),
            "grid": [p for p in self.head.parameters() if id(p) not in attention_ids],
            "attention": list(attention.parameters()) if attention is not None else [],
            "identity_head": (
                list(self.identity_head.parameters()) if self.identity_head is not None else []
            ),
        }
        return {name: [p for p in params if p.requires_grad] for name, params in groups.items()}


def build_model(model_cfg: Any, num_classes: int | None = None) -> XCosModel:
    """Build an ``XCosModel`` from the ``model`` section of a ``Config``.

    ``num_classes`` (identities of the training set) is needed only with an identity head.
    """
    backbone = BACKBONES.build(model_cfg.backbone, "model.backbone")
    head = HEADS.build(model_cfg.head, "model.head", in_channels=backbone.out_channels)
    target = TARGETS.build(model_cfg.target, "model.target")
    identity_head = None
    if model_cfg.identity_head is not None:
        if num_classes is None:
            raise ValueError("model.identity_head needs the number of training identities")
        grid_cells = backbone.grid_size**2
        identity_head = IDENTITY_HEADS.build(
            model_cfg.identity_head,
            "model.identity_head",
            embedding_dim=head.grid_channels * grid_cells,
            num_classes=num_classes,
        )
    return XCosModel(backbone, head, target, identity_head)
