"""Weights and checkpoints: the one module that reads, unpacks, checks, loads and writes them.

Every ``.pth`` / ``.pt`` file xcos reads (``-p``, ``-r``, ``model.pretrained``,
``model.target.checkpoint``, backbone weights, importers, built-in models, the feature and
effect caches) goes through ``read_checkpoint``: ``torch.load(weights_only=True)``, so no code
in a file ever runs, and every failure is a ``CheckpointError`` that names the file. Then, as
timm's and mmengine's checkpoint helpers do:

- ``state_dict_of`` finds the state dict in what a file holds (a plain state dict, or one under
  ``model`` / ``state_dict``), refuses a file xcos wrote in a format version it cannot read,
  and strips the prefixes wrappers add (``strip_wrapper_prefixes``);
- ``check_fit`` compares it with a model: missing, unexpected and mis-shaped keys, one message;
- ``load_weights`` checks and loads it (``load_weights_file`` reads a file first);
- ``write_checkpoint`` writes any torch object atomically (temporary file, fsync, rename).

It lives in the bottom layers, below ``xcos.models``, so that models, importers, the explainers
and the engine all use it without importing one another. The trainer's run checkpoints
(``last.pth`` / ``best.pth``, ``-r``) are built on it in ``xcos.engine.run_checkpoint``.
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
from xcos.io_utils import atomic_write

__all__ = [
    "FILE_FORMATS",
    "MODEL_FORMAT",
    "RECOGNIZER_FORMAT",
    "WRAPPER_PREFIXES",
    "check_fit",
    "load_weights",
    "load_weights_file",
    "read_checkpoint",
    "read_state_dict",
    "state_dict_of",
    "strip_wrapper_prefixes",
    "write_checkpoint",
]

#: The formats of files xcos writes with a ``format`` key (``xcos import``), and the version
#: of each this xcos reads.
RECOGNIZER_FORMAT = "xcos-recognizer"
MODEL_FORMAT = "xcos-model"
FILE_FORMATS = {RECOGNIZER_FORMAT: 1, MODEL_FORMAT: 1}

#: What wrappers put before every key of the module they wrap: DistributedDataParallel and
#: DataParallel (``module.``), ``torch.compile`` (``_orig_mod.``).
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def read_checkpoint(path: str | Path, what: str) -> Any:
    """Whatever the torch file at ``path`` holds, read with ``torch.load(weights_only=True,
    map_location="cpu")``: tensors and plain containers only, no code runs.

    ``what`` says what the file is for (``"-p"``, ``"-r: checkpoint"``,
    ``"model.target.checkpoint"``) and starts every message, followed by the path. A missing
    file raises ``CheckpointNotFoundError``; a file torch cannot read with
    ``weights_only=True`` (not a torch file, truncated, or a pickle of other objects than
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


def state_dict_of(data: Any, path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """The state dict in ``data`` (what ``read_checkpoint`` returned for ``path``).

    Accepted: a plain state dict; one under ``model`` (xcos training checkpoints, built-in
    models, imported xCos releases) or ``state_dict`` (recognizer files, most other
    projects); an ``xcos-*`` file only in a version ``FILE_FORMATS`` names. Wrapper prefixes
    are stripped (``strip_wrapper_prefixes``). Anything else raises ``CheckpointError``
    naming ``what`` and ``path``.
    """
    where = f"{what} {str(path)!r}"
    _check_format(data, where)
    for key in ("model", "state_dict"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{where} does not hold a state dict of tensors")
    return strip_wrapper_prefixes(data)


def read_state_dict(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """``state_dict_of(read_checkpoint(path, what), path, what)``: the weights in a file."""
    return state_dict_of(read_checkpoint(path, what), path, what)


def strip_wrapper_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` without the ``WRAPPER_PREFIXES`` a wrapper put before every one of its keys,
    nested ones too (``module._orig_mod.`` of a compiled model wrapped in DDP). A prefix only
    some keys carry names a real submodule and stays."""
    while state:
        shared = [p for p in WRAPPER_PREFIXES if all(key.startswith(p) for key in state)]
        if not shared:
            break
        state = {key[len(shared[0]) :]: value for key, value in state.items()}
    return state


def _check_format(data: Any, where: str) -> None:
    """Refuse a file xcos wrote (``format`` ``xcos-*``) in a format or version it cannot read;
    other files carry no such key, or one of another project, and pass."""
    found = data.get("format") if isinstance(data, dict) else None
    if not (isinstance(found, str) and found.startswith("xcos-")):
        return
    if found not in FILE_FORMATS:
        raise CheckpointError(
            f"{where} is an {found!r} file, which this xcos cannot read (it reads "
            f"{', '.join(FILE_FORMATS)}); another version of xcos wrote it"
        )
    if data.get("version") != FILE_FORMATS[found]:
        raise CheckpointError(
            f"{where} is an {found!r} file of version {data.get('version')!r}; this xcos "
            f"reads version {FILE_FORMATS[found]}"
        )


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


def load_weights(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str,
    target: str = "this model",
    *,
    strict: bool = True,
    hint: str = "",
    assign: bool = False,
) -> tuple[list[str], list[str]]:
    """Load the weights ``state`` into ``module`` once ``check_fit`` accepts them.

    ``source``, ``target``, ``strict`` and ``hint`` are ``check_fit``'s; ``assign`` makes the
    module's tensors the state's own (for a module built on the meta device). Returns
    ``(missing, unexpected)`` keys, both empty when ``strict``.
    """
    missing, unexpected = check_fit(state, module, source, target, strict=strict, hint=hint)
    module.load_state_dict(state, strict=strict, assign=assign)
    return missing, unexpected


def load_weights_file(
    module: nn.Module,
    path: str | Path,
    what: str,
    target: str = "this model",
    *,
    strict: bool = True,
    hint: str = "",
) -> tuple[list[str], list[str]]:
    """Read the state dict at ``path`` (``read_state_dict``) and load it (``load_weights``);
    every message starts with ``what`` and the path."""
    state = read_state_dict(path, what)
    source = f"{what} {str(path)!r}"
    return load_weights(module, state, source, target, strict=strict, hint=hint)


def write_checkpoint(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)`` via a temporary file in the same folder, fsynced and renamed:
    a crash at any point leaves the previous file or the new one, never a partial file."""
    with atomic_write(path) as stream:
        torch.save(obj, stream)


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
