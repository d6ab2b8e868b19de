"""Turn weights users already have into xcos files, reading them unchanged and safely.

Two kinds of input:

- a face recognizer's state dict (insightface arcface_torch ``backbone.pth``, InsightFace_Pytorch
  ``model_ir_se50.pth``): :func:`import_recognizer` checks every key and shape against the
  backbone named by ``arch`` and writes an ``xcos-recognizer`` file; :func:`load_recognizer`
  builds the backbone back from it;
- an original xCos release (``state_dict`` with ``backbone.``, ``attention.``,
  ``backbone_target.``): :func:`import_xcos_released` renames it to :class:`XCosModel` keys and
  writes an xcos model checkpoint (``model`` + ``config``) that ``-p`` and ``Verifier`` accept.

Every file is read and written through ``xcos.checkpoints``: with ``weights_only=True`` (a
pickle that would run code is refused), without wrapper prefixes (DDP's ``module.``), and
atomically. Half-precision tensors are imported as float32.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

# Registers iresnet; importing it runs the package __init__, which registers ir / ir_se.
import xcos.models.backbones.arcface_torch  # noqa: F401
from xcos.checkpoints import (
    FILE_FORMATS,
    MODEL_FORMAT,
    RECOGNIZER_FORMAT,
    check_fit,
    load_weights,
    read_checkpoint,
    read_state_dict,
    state_dict_of,
    write_checkpoint,
)
from xcos.config import ModelConfig, from_dict
from xcos.errors import CheckpointError, ConfigError
from xcos.models.xcos_model import build_model
from xcos.registry import BACKBONES

__all__ = [
    "ARCHITECTURES",
    "RELEASED_MODEL_CONFIG",
    "import_recognizer",
    "import_xcos_released",
    "load_recognizer",
]

#: Recognizer architectures that ``import_recognizer`` accepts, as backbone configs.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    **{f"iresnet{d}": {"type": "iresnet", "depth": d} for d in (18, 34, 50, 100, 200)},
    # InsightFace_Pytorch's IR-SE-50 (model_ir_se50.pth), the original xCos target network.
    "ir_se50": {"type": "ir_se", "depth": 50, "embedding_dim": 512},
}

_IR_SE50 = {"type": "ir_se", "depth": 50, "embedding_dim": 512}

#: The model an original xCos release becomes. ``symmetric`` is False because the original
#: attention reads its two faces in order (concat[enc(A), enc(B)]); False reproduces it exactly.
RELEASED_MODEL_CONFIG: dict[str, Any] = {
    "backbone": dict(_IR_SE50),
    "head": {
        "type": "xcos",
        "grid_channels": 32,
        "attention": "learned",
        "attention_channels": 16,
        "symmetric": False,
    },
    # The target's weights travel in the checkpoint (target.network.*), so nothing to load.
    "target": {"type": "pretrained", "checkpoint": None, "backbone": dict(_IR_SE50)},
}

# Original xCos sequences of (conv with bias, BN, PReLU) -> ours (conv without bias, BN, PReLU).
_RELEASED_BLOCKS = {
    "backbone.conv1x1.": "head.grid.",
    "attention.embedding_net.": "head.attention.face_encoder.",
    "attention.attention.0.": "head.attention.joint.0.0.",
    "attention.attention.1.": "head.attention.joint.0.1.",
    "attention.attention.2.": "head.attention.joint.0.2.",
    "attention.attention.3.": "head.attention.joint.1.0.",
    "attention.attention.4.": "head.attention.joint.1.1.",
    "attention.attention.5.": "head.attention.joint.1.2.",
}
_RELEASED_PREFIXES = {
    **_RELEASED_BLOCKS,
    "backbone_target.": "target.network.",
    "backbone.": "backbone.",
}
_HEAD_BLOCKS = (
    "head.grid",
    "head.attention.face_encoder",
    "head.attention.joint.0",
    "head.attention.joint.1",
)


# ----------------------------------------------------------------------------- recognizers


def import_recognizer(weights: str | Path, arch: str, out: str | Path) -> Path:
    """Check a recognizer's state dict against ``arch`` and write it as an xcos-recognizer file.

    ``weights`` is read unchanged: a plain state dict, or one under ``state_dict`` / ``model``;
    a ``module.`` prefix (DDP saves) is stripped. Every key and shape must match the backbone
    of ``ARCHITECTURES[arch]``; otherwise ``CheckpointError`` names the file, the architecture
    and the first missing / unexpected / wrong-shape keys. The output ``out`` holds ``format``,
    ``version``, ``backbone`` (the backbone config) and ``state_dict``. Returns ``out``.
    """
    if arch not in ARCHITECTURES:
        raise ConfigError(
            f"unknown recognizer architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}"
        )
    backbone_cfg = copy.deepcopy(ARCHITECTURES[arch])
    state = _read_float32(weights, "import_recognizer")
    expected = _shapes(_build_backbone(backbone_cfg))
    state = _fill_batch_counters(state, expected)
    check_fit(state, expected, f"import_recognizer {str(weights)!r}", f"architecture {arch!r}")
    record = {
        "format": RECOGNIZER_FORMAT,
        "version": FILE_FORMATS[RECOGNIZER_FORMAT],
        "backbone": backbone_cfg,
        "state_dict": state,
    }
    write_checkpoint(record, out)
    return Path(out)


def load_recognizer(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Build the backbone stored in an xcos-recognizer file and load its weights strictly.

    Returns ``(backbone, backbone_config)``; the backbone is in eval mode and maps
    ``[B, 3, H, W]`` to ``{"grid": [B, C, h, w], "embedding": [B, D]}``.
    """
    source = f"load_recognizer {str(path)!r}"
    data = read_checkpoint(path, "load_recognizer")
    if not isinstance(data, dict) or data.get("format") != RECOGNIZER_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(
            f"{source} is not an {RECOGNIZER_FORMAT} file (format {found!r}); write one with "
            "import_recognizer (`xcos import`)"
        )
    state = state_dict_of(data, path, "load_recognizer")  # checks the format's version
    backbone_cfg = data.get("backbone")
    if not isinstance(backbone_cfg, dict):
        raise CheckpointError(f"{source} has no backbone config")
    try:
        backbone = _build_backbone(backbone_cfg)
    except (ConfigError, ValueError) as err:
        raise CheckpointError(f"{source}: backbone config: {err}") from err
    # Built on the meta device and given the file's tensors (assign=True): no random
    # initialisation of weights that are all overwritten anyway (seconds for deep networks).
    load_weights(backbone, state, source, f"backbone {backbone_cfg}", assign=True)
    left = [
        name for name, t in [*backbone.named_parameters(), *backbone.named_buffers()] if t.is_meta
    ]
    if left:
        raise CheckpointError(f"{source} leaves {left[:5]} without values")
    return backbone.eval(), copy.deepcopy(backbone_cfg)


# ----------------------------------------------------------------------------- xCos releases


def import_xcos_released(weights: str | Path, out: str | Path) -> Path:
    """Convert an original xCos release into an xcos model checkpoint at ``out``.

    ``weights`` (the release's ``state_dict``: ``backbone.*`` IR-SE-50 plus the grid conv
    ``backbone.conv1x1.*``, ``attention.*``, ``backbone_target.*``) is renamed to the keys of
    the :class:`XCosModel` built from ``RELEASED_MODEL_CONFIG``; conv biases are folded into the
    following BatchNorm and single-slope PReLUs are widened, both exactly. The output holds
    ``model`` (the state dict) and ``config`` (``{"name", "model"}``). Returns ``out``.
    """
    source = f"import_xcos_released {str(weights)!r}"
    state = _rename_released(_read_float32(weights, "import_xcos_released"))
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = build_model(from_dict(ModelConfig, copy.deepcopy(RELEASED_MODEL_CONFIG), "model"))
    expected = _shapes(model)
    state = _fold_conv_biases(state, expected, source)
    state = _widen_prelus(state, expected)
    state = _fill_batch_counters(state, expected)
    check_fit(state, expected, source, "the xCos model of an original release")
    record = {
        "format": MODEL_FORMAT,
        "version": FILE_FORMATS[MODEL_FORMAT],
        "model": state,
        "config": {"name": "xcos_released", "model": copy.deepcopy(RELEASED_MODEL_CONFIG)},
    }
    write_checkpoint(record, out)
    return Path(out)


def _rename_released(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original key -> XCosModel key; unknown keys keep their name (reported as unexpected)."""
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        prefix = next((p for p in _RELEASED_PREFIXES if key.startswith(p)), None)
        name = key if prefix is None else _RELEASED_PREFIXES[prefix] + key[len(prefix) :]
        renamed[name] = value
    return renamed


def _fold_conv_biases(
    state: dict[str, torch.Tensor], expected: Mapping[str, torch.Size], source: str
) -> dict[str, torch.Tensor]:
    """Move each head conv's bias into the BatchNorm after it: ``running_mean -= bias``.

    Exact in eval mode: BN computes (x + b - mean) / std, which equals (x - (mean - b)) / std.
    In train mode BN subtracts the batch mean, which absorbs any constant bias, so the conv
    without bias trains the same way.
    """
    state = dict(state)
    for block in _HEAD_BLOCKS:
        bias = state.pop(f"{block}.0.bias", None)
        mean_key = f"{block}.1.running_mean"
        if bias is None or mean_key not in state or mean_key not in expected:
            continue  # a conv already without bias, or a missing BN that check_fit reports
        mean = state[mean_key]
        if bias.shape != mean.shape:
            raise CheckpointError(
                f"{source}: conv bias {block}.0.bias {tuple(bias.shape)} does not match "
                f"{mean_key} {tuple(mean.shape)}"
            )
        state[mean_key] = (mean.double() - bias.double()).to(mean.dtype)
    return state


def _widen_prelus(
    state: dict[str, torch.Tensor], expected: Mapping[str, torch.Size]
) -> dict[str, torch.Tensor]:
    """Give single-slope PReLUs one slope per channel: the same function, our layout."""
    state = dict(state)
    for block in _HEAD_BLOCKS:
        key = f"{block}.2.weight"
        value = state.get(key)
        if value is not None and key in expected and value.numel() == 1:
            state[key] = value.reshape(1).expand(expected[key]).clone()
    return state


# ----------------------------------------------------------------------------- shared


def _read_float32(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """The state dict in a file (``read_state_dict``), floating tensors as float32: a
    half-precision save imports as the same network as a float32 one."""
    state = read_state_dict(path, what)
    return {key: v.float() if v.is_floating_point() else v for key, v in state.items()}


def _fill_batch_counters(
    state: dict[str, torch.Tensor], expected: Mapping[str, torch.Size]
) -> dict[str, torch.Tensor]:
    # Saves from PyTorch < 0.4.1 have no BN num_batches_tracked; it only matters for BN with
    # momentum=None, so a missing counter starts at zero instead of failing the import.
    # Only for a BN whose statistics are present, so a wrong architecture still shows up whole.
    filled = dict(state)
    for key in expected:
        bn = key.removesuffix("num_batches_tracked")
        if bn != key and key not in filled and f"{bn}running_mean" in filled:
            filled[key] = torch.tensor(0, dtype=torch.long)
    return filled


def _build_backbone(cfg: Mapping[str, Any]) -> nn.Module:
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        return BACKBONES.build(dict(cfg), "backbone")


def _shapes(module: nn.Module) -> dict[str, torch.Size]:
    return {key: value.shape for key, value in module.state_dict().items()}
