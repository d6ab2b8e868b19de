"""A training run's checkpoints (``DIR/checkpoints/last.pth``, ``best.pth``): the whole state
the Trainer needs to continue exactly (``-r``), written and read through ``xcos.checkpoints``
(atomic writes; ``weights_only`` reads that name the file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xcos.checkpoints import read_checkpoint, write_checkpoint
from xcos.errors import CheckpointError

__all__ = [
    "RUN_CHECKPOINT_KEYS",
    "read_run_checkpoint",
    "run_checkpoint_path",
    "write_run_checkpoint",
]

#: What every run checkpoint holds (besides schedulers, scaler, RNG states, best, config, ...).
RUN_CHECKPOINT_KEYS = ("model", "optimizers", "epoch", "step")


def run_checkpoint_path(run_dir: str | Path, name: str = "last.pth") -> Path:
    """Where a run keeps checkpoint ``name``: ``run_dir/checkpoints/<name>``."""
    return Path(run_dir) / "checkpoints" / name


def write_run_checkpoint(state: dict[str, Any], run_dir: str | Path, name: str) -> None:
    """Write the Trainer's ``state`` as ``run_checkpoint_path(run_dir, name)``, atomically."""
    write_checkpoint(state, run_checkpoint_path(run_dir, name))


def read_run_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint to resume from (``-r``); a file that lacks any of
    ``RUN_CHECKPOINT_KEYS`` (weights alone, say) raises ``CheckpointError`` naming it."""
    path = Path(path)
    state = read_checkpoint(path, "-r: checkpoint")
    if not isinstance(state, dict) or any(key not in state for key in RUN_CHECKPOINT_KEYS):
        raise CheckpointError(
            f"-r: {str(path)!r} is not an xcos training checkpoint (needs "
            f"{', '.join(RUN_CHECKPOINT_KEYS)}); use -p to load weights only"
        )
    return state
