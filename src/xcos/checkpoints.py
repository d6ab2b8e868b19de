"""Torch weight files: the one reader, the one writer and the one "do these weights fit" check.

Models, importers, the trainer and the feature cache all read ``.pth`` / ``.pt`` files through
``read_weights`` (safe: no code runs; errors name the file), write them through
``save_checkpoint`` (atomic) and check a state dict against a model with ``check_fit``. This
module lives outside ``xcos.engine`` so that models and importers need not import the training
engine.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xcos.errors import CheckpointError, CheckpointNotFoundError
from xcos.io_utils import atomic_save


def save_checkpoint(state: Any, path: str | Path) -> None:
    """Write ``state`` with ``torch.save`` via a temporary file in the same folder and a rename.

    A crash at any point leaves either the previous file or the new one, never a partial file.
    """
    atomic_save(state, path)


def check_fit(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Size] | nn.Module,
    source: str,
    target: str = "this model",
    *,
    strict: bool = True,
    hint: str = "",
) -> tuple[list[str], list[str]]:
    """Check that the weights ``state`` fit ``expected`` (a model, or its key -> shape map).

    Returns ``(missing, unexpected)`` keys. Raises ``CheckpointError`` with one message format,
    "<source> does not fit <target>[ (diagnosis)]: N missing (first: ...); N unexpected
    (first: ...); N with the wrong shape (file vs model) (first: key (file) vs (model))[; hint]",
    when ``strict`` and any key is missing, unexpected or of the wrong shape; when not
    ``strict`` (``-p``: load what fits, report the rest), only when a shape differs or no key
    is shared at all.
    """
    if isinstance(expected, nn.Module):
        expected = {key: value.shape for key, value in expected.state_dict().items()}
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    wrong = [
        f"{key} {tuple(state[key].shape)} vs {tuple(expected[key])}"
        for key in expected
        if key in state and state[key].shape != expected[key]
    ]
    shared = len(state) > len(unexpected)
    if not (wrong or not shared or (strict and (missing or unexpected))):
        return missing, unexpected
    if wrong:
        diagnosis = (
            f" (a checkpoint of another architecture: {len(wrong)} parameter(s) differ in shape)"
        )
    elif not shared:
        diagnosis = (
            f" (it shares no parameter name with it: file keys start with {list(state)[:3]}, "
            f"model keys with {list(expected)[:3]})"
        )
    else:
        diagnosis = ""
    parts = [
        f"{len(items)} {label} (first: {', '.join(items[:5])})"
        for label, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("with the wrong shape (file vs model)", wrong),
        )
        if items
    ]
    if hint:
        parts.append(hint)
    raise CheckpointError(f"{source} does not fit {target}{diagnosis}: {'; '.join(parts)}")


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
