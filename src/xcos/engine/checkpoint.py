"""Checkpoints: written atomically, read without running code."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xcos.errors import CheckpointError
from xcos.models.targets import load_state_dict
from xcos.weights_io import read_weights


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` via a temporary file in the same folder and a rename.

    A crash at any point leaves either the previous file or the new one, never a partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(state, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a full training checkpoint (for ``-r``) with ``weights_only=True``."""
    path = Path(path)
    state = read_weights(path, "-r: checkpoint")
    needed = ("model", "optimizers", "epoch", "step")
    if not isinstance(state, dict) or any(key not in state for key in needed):
        raise CheckpointError(
            f"-r: {str(path)!r} is not an xcos training checkpoint (needs {', '.join(needed)}); "
            "use -p to load weights only"
        )
    return state


def load_weights(
    model: nn.Module, path: str | Path, state: dict[str, torch.Tensor] | None = None
) -> tuple[list[str], list[str]]:
    """Load weights non-strictly; shape mismatches and no overlap at all are errors.

    ``state`` is the state dict already read from ``path`` (read here when not given).
    Returns (missing keys, unexpected keys) for the caller to report.
    """
    state = load_state_dict(path, "-p") if state is None else state
    own = model.state_dict()
    mismatched = [
        f"{key} {tuple(value.shape)} vs model {tuple(own[key].shape)}"
        for key, value in state.items()
        if key in own and value.shape != own[key].shape
    ]
    if mismatched:
        raise CheckpointError(
            f"-p {str(path)!r} is a checkpoint of another architecture: {len(mismatched)} "
            f"parameter(s) differ in shape, first: {'; '.join(mismatched[:5])}"
        )
    if not any(key in own for key in state):
        raise CheckpointError(
            f"-p {str(path)!r} shares no parameter name with this model "
            f"(checkpoint keys start with {list(state)[:3]}, model keys with {list(own)[:3]})"
        )
    missing, unexpected = model.load_state_dict(state, strict=False)
    return list(missing), list(unexpected)
