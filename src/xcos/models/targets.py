"""Target cosines for the xCos loss: what the xCos score is trained to reproduce."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xcos.checkpoints import check_fit, read_weights
from xcos.errors import CheckpointError
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
        self.network = BACKBONES.build(backbone, "model.target.backbone")
        if checkpoint is not None:
            self._load(checkpoint)
        self.network.requires_grad_(False)
        self.network.eval()

    def _load(self, checkpoint: str) -> None:
        state = load_state_dict(checkpoint, "model.target.checkpoint")
        check_fit(state, self.network, f"model.target.checkpoint {checkpoint!r}", TARGET_BACKBONE)
        self.network.load_state_dict(state)

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


def read_checkpoint(path: str | Path, what: str) -> Any:
    """Read a torch file safely (``weights_only=True``: no code runs); errors name ``what``."""
    return read_weights(path, f"{what}: weights file")


def state_dict_of(data: Any, path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """The state dict in ``data``: a plain one, or under ``model`` / ``state_dict``."""
    for key in ("model", "state_dict"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{what}: {str(path)!r} does not hold a state dict of tensors")
    return data


def load_state_dict(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """Read weights safely (no code runs) from a plain state dict or an xcos checkpoint."""
    return state_dict_of(read_checkpoint(path, what), path, what)
