"""Target cosines for the xCos loss: what the xCos score is trained to reproduce."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xcos.checkpoints import load_weights_file
from xcos.registry import BACKBONES, TARGETS

TARGET_BACKBONE = "model.target.backbone"


@TARGETS.register("self")
class SelfTarget(nn.Module):
    """The model's own global cosine, detached: xCos learns to explain the cosine it sits on.

    Used for training from scratch, where no pretrained recognizer exists.
    """

    def forward(
        self, batch: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        return outputs["cos"].detach()


@TARGETS.register("pretrained")
class PretrainedTarget(nn.Module):
    """A frozen pretrained recognizer; the target is the cosine of its two embeddings.

    The network is loaded from ``checkpoint`` when one is given (a state dict, read with
    ``weights_only=True``), never receives gradients and stays in eval mode even when the model
    is put in train mode (the original code let dropout and BN statistics corrupt its target).

    Args:
        checkpoint: path of the recognizer's weights; ``None`` loads nothing here, for models
            whose checkpoint carries the target's weights (``target.network.*``), such as an
            imported original xCos release.
        backbone: backbone config of the recognizer (must produce an ``embedding``).
    """

    needs_images = True  # it runs its own network on the batch's faces

    def __init__(self, checkpoint: str | None = None, *, backbone: dict[str, Any]) -> None:
        super().__init__()
        self.network = BACKBONES.build(backbone, TARGET_BACKBONE)
        if checkpoint is not None:
            load_weights_file(self.network, checkpoint, "model.target.checkpoint", TARGET_BACKBONE)
        self.network.requires_grad_(False)
        self.network.eval()

    def train(self, mode: bool = True) -> PretrainedTarget:
        super().train(mode)
        self.network.eval()  # frozen: BN statistics and dropout never switch to training
        return self

    @torch.no_grad()
    def forward(
        self, batch: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        images = torch.cat([batch["image_a"], batch["image_b"]])
        embedding = self.network(images)["embedding"].float()
        embedding_a, embedding_b = F.normalize(embedding, dim=1).chunk(2)
        return (embedding_a * embedding_b).sum(dim=1)
