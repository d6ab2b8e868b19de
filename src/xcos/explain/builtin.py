"""Built-in models: real photos explained out of the box, with no checkpoint and no training.

A built-in model is a frozen recognizer whose weights come from an installed package, plus a
small trained xCos head shipped inside xcos (``xcos/explain/weights/<name>.pth``): the head's
weights, the model config, the decision threshold and what the head was trained on. The
recognizer's own weights are never copied into the file.

- ``dlib``: dlib's face ResNet (weights from ``face-recognition-models``,
  ``pip install -e ".[dlib]"``) with the faithful level-2 head of ``configs/xcos_dlib_lfw.json``,
  trained on LFW's ``peopleDevTrain`` (View 1 training identities); ``WEIGHTS/dlib.md`` says
  what it was trained on and what it measured.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from xcos.checkpoints import load_weights, read_checkpoint, state_dict_of, write_checkpoint
from xcos.config import ModelConfig, from_dict
from xcos.errors import CheckpointError, ConfigError
from xcos.io_utils import file_sha256
from xcos.models.xcos_model import XCosModel, build_model, inference_config

__all__ = ["BUILTIN", "builtin_path", "load_builtin", "write_builtin"]

WEIGHTS = Path(__file__).resolve().parent / "weights"

#: The built-in models' names.
BUILTIN = ("dlib",)


def builtin_path(name: str) -> Path:
    """The shipped file of built-in model ``name``."""
    if name not in BUILTIN:
        raise ConfigError(f"no built-in model {name!r}; built-in models: {', '.join(BUILTIN)}")
    return WEIGHTS / f"{name}.pth"


def write_builtin(checkpoint: str | Path, out: str | Path, trained_on: str) -> Path:
    """Write a built-in model file from an ``xcos train`` checkpoint of a frozen recognizer
    whose weights load by themselves (``"weights": "auto"``): the head's weights, the model
    config, the validation threshold and ``trained_on`` (atomically)."""
    state = read_checkpoint(checkpoint, "checkpoint")
    config = state.get("config") if isinstance(state, dict) else None
    if not config or not config["model"].get("freeze_backbone"):
        raise CheckpointError(
            f"{checkpoint}: a built-in model is a frozen recognizer plus a head; this "
            "checkpoint has no config with model.freeze_backbone"
        )
    if config["model"]["backbone"].get("weights") != "auto":
        raise CheckpointError(
            f"{checkpoint}: the recognizer's weights must load by themselves "
            '(model.backbone.weights "auto"); they are not copied into a built-in model'
        )
    if state.get("threshold") is None:
        raise CheckpointError(f"{checkpoint}: no validation threshold stored")
    weights = state_dict_of(state, checkpoint, "checkpoint")
    head = {key: value for key, value in weights.items() if key.startswith("head.")}
    builtin = {
        "model": head,
        "config": {"model": config["model"]},
        "threshold": float(state["threshold"]),
        "trained_on": trained_on,
        "source": {"checkpoint": Path(checkpoint).name, "sha256": file_sha256(checkpoint)},
    }
    out = Path(out)
    write_checkpoint(builtin, out)
    return out


def load_builtin(name: str) -> tuple[XCosModel, float, dict[str, Any]]:
    """Built-in model ``name``: (model in eval mode, its threshold, its provenance)."""
    path = builtin_path(name)
    state = read_checkpoint(path, f"built-in model {name!r}")
    model_cfg = from_dict(ModelConfig, state["config"]["model"], "model")
    # Scoring only (no target, no identity head), but the recognizer's weights are loaded
    # from its package ("auto"): the file holds the head alone.
    model_cfg = dataclasses.replace(inference_config(model_cfg), backbone=model_cfg.backbone)
    model = build_model(model_cfg)  # DlibWeightsNotFoundError says what to install
    head = state_dict_of(state, path, f"built-in model {name!r}")
    source = f"built-in model {name!r} ({path})"
    missing, unexpected = load_weights(model, head, source, strict=False)
    wrong = [key for key in missing if not key.startswith("backbone.")] + unexpected
    if wrong:
        raise CheckpointError(f"{source} does not fit: {wrong[:5]}")
    provenance = {
        "backbone": model_cfg.backbone.get("type"),
        "threshold_source": f"built-in model {name!r} (validation)",
        "checkpoint": f"built-in:{name}",
        "checkpoint_sha256": file_sha256(path),
        "trained_on": state.get("trained_on"),
    }
    return model.eval(), float(state["threshold"]), provenance
