"""The one reader of torch weight files: safe (no code runs), with errors that name the file.

Models, importers, the trainer and the feature cache all read ``.pth`` / ``.pt`` files through
``read_weights``; it lives outside ``xcos.engine`` so that models and importers need not
import the training engine.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from xcos.errors import CheckpointError, CheckpointNotFoundError


def read_weights(path: str | Path, what: str) -> Any:
    """``torch.load(path, weights_only=True, map_location="cpu")``, failures as CheckpointError.

    ``what`` says what the file is for (``"-p weights"``, ``"-r: checkpoint"``) and starts
    every message. A missing file raises ``CheckpointNotFoundError``; a file torch cannot read
    with ``weights_only=True`` (not a torch file, truncated, or a pickle of other objects than
    tensors and plain containers) raises ``CheckpointError`` "not a PyTorch checkpoint".
    """
    path = Path(path)
    where = f"{what} {str(path)!r}"
    if not path.exists():
        raise CheckpointNotFoundError(f"{where} does not exist (no such file)")
    if not path.is_file():
        raise CheckpointError(f"{where}: not a file")
    try:
        with warnings.catch_warnings():  # a plain pickle draws a protocol warning first
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as err:
        raise CheckpointError(f"{where}: cannot be read: {err.strerror or err}") from err
    except Exception as err:  # torch raises several types for corrupt or unsafe files
        raise CheckpointError(f"{where}: not a PyTorch checkpoint ({_reason(err)})") from err


def _reason(err: Exception) -> str:
    """A short reason, without torch's advice to retry with weights_only=False (which runs
    whatever code the file holds: never the answer for a file of unknown origin)."""
    text = str(err)
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0]
        detail = " ".join(detail.split())
        if detail.startswith("Unsupported global:"):
            name = detail.removeprefix("Unsupported global:").split()
            name = name[1] if name[:1] == ["GLOBAL"] and len(name) > 1 else " ".join(name[:1])
            return f"it pickles {name}, which is not a tensor or plain data"
        reason = f"the safe unpickler refused it: {detail}"
    elif isinstance(err, EOFError):
        reason = "the file is empty or truncated"
    elif isinstance(err, (KeyError, pickle.UnpicklingError)):  # e.g. a text file
        reason = f"neither a zip archive nor a pickle that torch wrote ({type(err).__name__})"
    else:
        first = text.split(". ")[0].strip().rstrip(".")
        reason = f"{type(err).__name__}: {first}" if first else type(err).__name__
    if "weights_only" in reason or len(reason) > 200:
        reason = type(err).__name__
    return reason
