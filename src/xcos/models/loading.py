"""The one way to build an xCos model and load weights into it: Trainer (``-p``), Tester and
Verifier all go through ``build_and_load``; ``load_weights`` is its non-strict loader."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from xcos.checkpoints import check_fit
from xcos.config import ModelConfig
from xcos.models.targets import load_state_dict
from xcos.models.xcos_model import XCosModel, build_model, inference_config

log = logging.getLogger(__name__)

__all__ = ["build_and_load", "load_weights"]


def load_weights(
    model: nn.Module, path: str | Path, state: dict[str, torch.Tensor] | None = None
) -> tuple[list[str], list[str]]:
    """Load weights non-strictly; shape mismatches and no overlap at all are errors.

    ``state`` is the state dict already read from ``path`` (read here when not given).
    Returns (missing keys, unexpected keys) for the caller to report.
    """
    state = load_state_dict(path, "-p") if state is None else state
    check_fit(state, model, f"-p {str(path)!r}", strict=False)
    missing, unexpected = model.load_state_dict(state, strict=False)
    return list(missing), list(unexpected)


def build_and_load(
    model_cfg: ModelConfig,
    weights: str | Path | None = None,
    *,
    num_classes: int | None = None,
    inference: bool = False,
    device: torch.device | str | None = None,
    state: dict[str, torch.Tensor] | None = None,
) -> XCosModel:
    """Build the model of ``model_cfg`` and load ``weights`` (``-p``) into it, if given.

    ``inference`` builds the model for scoring only (``inference_config``: no identity head,
    no target network); ``device`` moves it there before loading; ``state`` is the state dict
    already read from ``weights``. Keys the file lacks or the model does not use are logged
    (a warning for missing keys at inference: those parts keep random weights); wrong shapes
    or no shared key raise ``CheckpointError``.
    """
    model = build_model(inference_config(model_cfg) if inference else model_cfg, num_classes)
    if device is not None:
        model = model.to(device)
    if weights is None:
        return model
    missing, unexpected = load_weights(model, weights, state)
    if not inference:
        log.info(
            "loaded weights %s: %d missing key(s) %s, %d unexpected key(s) %s",
            weights,
            len(missing),
            missing[:10],
            len(unexpected),
            unexpected[:10],
        )
        return model
    if missing:
        log.warning(
            "-p %s: %d parameter(s) not in the checkpoint: %s", weights, len(missing), missing[:10]
        )
    if unexpected:
        log.info(
            "-p %s: %d checkpoint key(s) unused in test mode: %s",
            weights,
            len(unexpected),
            unexpected[:10],
        )
    return model
