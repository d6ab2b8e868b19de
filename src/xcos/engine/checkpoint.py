"""Checkpoints: written atomically, read without running code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xcos.checkpoints import read_weights, save_checkpoint
from xcos.errors import CheckpointError

# Re-exported for compatibility: save_checkpoint lives in xcos.checkpoints, load_weights in
# xcos.models.loading (imported on first use: models import this module's save_checkpoint).
__all__ = ["load_checkpoint", "save_checkpoint"]  # and load_weights, via __getattr__


def __getattr__(name: str) -> Any:
    if name == "load_weights":
        from xcos.models.loading import load_weights

        return load_weights
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
