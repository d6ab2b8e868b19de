"""Configs: JSON files layered into one plain, validated value.

A run's config is a template (``-tc``) deep-merged with any number of specified configs (``-sc``,
later wins) and ``--set dotted.key=value`` overrides. The merged dict is validated against the
dataclasses below (unknown keys, wrong types, missing required keys fail with the dotted path);
sections with a ``type`` are checked against the signature of the registered class they build.
Loading has no side effects and there is no global config object.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from xcos.config_types import check_value
from xcos.errors import ConfigError

__all__ = [
    "Config",
    "config_diff",
    "deep_merge",
    "load_config",
    "parse_override",
]


@dataclass(frozen=True)
class Component:
    """Marks a dict field that a registry builds; ``injected`` keys are filled in by code."""

    registry: str
    injected: tuple[str, ...] = ()
    own_keys: tuple[tuple[str, Any], ...] = ()


# Keys of optimizer / scheduler sections that xcos reads itself (the rest go to torch):
# which model parameter groups an optimizer updates, and how a scheduler is stepped.
OPTIMIZER_KEYS = (("groups", list[str]),)
SCHEDULER_KEYS = (
    ("interval", Literal["epoch", "step"]),
    ("warmup", int),
    ("warmup_factor", float),
)


@dataclass
class TrainerConfig:
    epochs: int = 20
    amp: Literal["none", "bf16", "fp16"] = "none"
    channels_last: bool = False
    grad_clip: float | None = None
    deterministic: bool = False
    log_every: int = 50
    checkpoint_every_steps: int | None = None
    max_steps_per_epoch: int | None = None
    compile: bool = False
    sync_batchnorm: bool = False
    find_unused_parameters: bool = False
    tensorboard: bool = True
    tensorboard_images: int = 4
    progress_bar: bool = True


@dataclass(frozen=True)
class PerturbSettings:
    """``data.perturb``: how B* is made.

    Args:
        paste: share of pairs whose B* is pasted (the rest are covered).
        side: smallest and largest side of the rectangle, as fractions of the face side
            (about one to two grid cells: a 7x7 grid's cell is 0.14, a 4x4 grid's 0.25).
        variants: how many B* each face has (each epoch picks one); with a frozen backbone
            their outputs are computed once and cached, so keep it small there.
        seed: seed of the rectangles, donors and colours.
    """

    paste: float = 0.5
    side: tuple[float, float] = (0.15, 0.35)
    variants: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        low, high = self.side
        if not 0.0 <= self.paste <= 1.0:
            raise ConfigError(f"data.perturb.paste: expected a share in [0, 1], got {self.paste}")
        if not 0.0 < low <= high < 1.0:
            raise ConfigError(f"data.perturb.side: expected 0 < low <= high < 1, got {self.side}")
        if self.variants < 1:
            raise ConfigError(f"data.perturb.variants: expected >= 1, got {self.variants}")


@dataclass(frozen=True)
class EffectSettings:
    """``data.effects``: training pairs whose per-cell effects on the recognizer's cosine are
    measured once, offline (``xcos.engine.effect_targets``), for the ``effect_ranking`` loss.

    Args:
        pairs: natural pairs of training identities (drawn as the training pairs are).
        swaps: self-swap pairs: a face against itself with a random rectangle or blob of
            another training identity's face pasted in (never a facial region: those are the
            yardsticks' test).
        side: smallest and largest side of the pasted shape, as fractions of the face side.
        seed: seed of the pairs, donors and shapes.
    """

    pairs: int = 2000
    swaps: int = 2000
    side: tuple[float, float] = (0.1, 0.3)
    seed: int = 0

    def __post_init__(self) -> None:
        low, high = self.side
        if self.pairs < 0 or self.swaps < 0 or self.pairs + self.swaps == 0:
            raise ConfigError(
                f"data.effects: expected pairs, swaps >= 0, not both 0; got {self.pairs}, "
                f"{self.swaps}"
            )
        if not 0.0 < low <= high < 1.0:
            raise ConfigError(f"data.effects.side: expected 0 < low <= high < 1, got {self.side}")


@dataclass
class DataConfig:
    train: Annotated[dict, Component("DATASETS")] | None = None
    batch_size: int = 32  # per process: the global batch is batch_size x processes
    num_workers: int = 2
    pin_memory: bool | None = None  # None: pin when training on CUDA
    persistent_workers: bool = True
    prefetch_factor: int | None = None  # batches each worker keeps ready (torch's default: 2)
    cache_features: bool = True
    synthetic: Annotated[dict, Component("GENERATORS")] | None = None
    perturb: PerturbSettings | None = None  # B* for faithful-explanation training
    effects: EffectSettings | None = None  # pairs with measured cell effects (distillation)


@dataclass
class ModelConfig:
    backbone: Annotated[dict, Component("BACKBONES")]
    head: Annotated[dict, Component("HEADS", ("in_channels",))]
    target: Annotated[dict, Component("TARGETS")] = field(default_factory=lambda: {"type": "self"})
    identity_head: (
        Annotated[dict, Component("IDENTITY_HEADS", ("embedding_dim", "num_classes"))] | None
    ) = None
    pretrained: str | None = None
    freeze_backbone: bool = False
    cos: Literal["grid", "embedding"] = "grid"
    calibrate: bool = False


@dataclass
class Monitor:
    pair_set: str
    score: str = "xcos"
    metric: str = "accuracy"


def default_metrics() -> list[dict]:
    return [{"type": "verification_accuracy", "folds": 10}, {"type": "roc"}]


@dataclass
class ValidationConfig:
    pair_sets: list[str | dict] = field(default_factory=list)
    metrics: list[Annotated[dict, Component("METRICS")]] = field(default_factory=default_metrics)
    every: int = 1
    batch_size: int = 64
    flip: bool = False
    monitor: Monitor | None = None


@dataclass
class TestConfig:
    pair_sets: list[str | dict] = field(default_factory=list)
    metrics: list[Annotated[dict, Component("METRICS")]] = field(default_factory=default_metrics)
    batch_size: int = 64
    flip: bool = False
    figures: int = 4
    compile: bool = False  # embed through torch.compile with frozen weights (evaluation.compiled)


@dataclass
class Config:
    """The whole run configuration; ``raw`` keeps the validated plain dict."""

    name: str
    model: ModelConfig
    data: DataConfig = field(default_factory=DataConfig)
    losses: list[Annotated[dict, Component("LOSSES")]] = field(default_factory=list)
    optimizers: dict[str, Annotated[dict, Component("OPTIMIZERS", ("params",), OPTIMIZER_KEYS)]] = (
        field(default_factory=dict)
    )
    seed: int = 0
    schedulers: dict[
        str, Annotated[dict, Component("SCHEDULERS", ("optimizer",), SCHEDULER_KEYS)]
    ] = field(default_factory=dict)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    test: TestConfig = field(default_factory=TestConfig)
    raw: dict = field(default_factory=dict, repr=False, compare=False)


# ----------------------------------------------------------------------------- layering


def read_json(path: str | Path) -> dict:
    """Read a JSON config file; errors name the file (and line for syntax errors)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist or is not a file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot be read: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a JSON object, got {type(data).__name__}")
    return data


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict:
    """Merge ``update`` into a copy of ``base``; nested dicts merge, everything else replaces.

    A component whose ``type`` changes is replaced whole: the old type's keys would not fit
    the new constructor.
    """
    merged = copy.deepcopy(dict(base))
    for key, value in update.items():
        old = merged.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping) and _same_type(old, value):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _same_type(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    return new.get("type", old.get("type")) == old.get("type")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=3"`` -> (["a", "b"], 3); the value is parsed as JSON, else kept as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected dotted.key=value")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.strip().split("."), parsed


def apply_override(cfg: dict, keys: list[str], value: Any) -> None:
    """Set ``cfg[k0][k1]... = value``, creating dicts on the way; list items by index."""
    node: Any = cfg
    for depth, key in enumerate(keys[:-1]):
        nxt = _child(node, key, keys[: depth + 1])
        if nxt is None:
            nxt = {}
            node[key] = nxt
        node = nxt
    last = keys[-1]
    if isinstance(node, list):
        node[_index(node, last, keys)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"--set {'.'.join(keys)}: {'.'.join(keys[:-1])} is not an object")


def _child(node: Any, key: str, keys: list[str]) -> Any:
    if isinstance(node, list):
        return node[_index(node, key, keys)]
    if isinstance(node, dict):
        return node.get(key)
    raise ConfigError(f"--set {'.'.join(keys)}: {'.'.join(keys[:-1])} is not an object")


def _index(node: list, key: str, keys: list[str]) -> int:
    if not key.lstrip("-").isdigit() or not -len(node) <= int(key) < len(node):
        raise ConfigError(
            f"--set {'.'.join(keys)}: {key!r} is not an index of a list of {len(node)}"
        )
    return int(key)


def merge_layers(
    template: str | Path | Mapping[str, Any],
    specified: Iterable[str | Path | Mapping[str, Any]] = (),
    overrides: Iterable[str] = (),
) -> tuple[dict, dict]:
    """Return (template dict, merged dict) from the layered sources."""
    base = (
        read_json(template) if not isinstance(template, Mapping) else copy.deepcopy(dict(template))
    )
    merged = base
    for layer in specified:
        merged = deep_merge(merged, read_json(layer) if not isinstance(layer, Mapping) else layer)
    merged = copy.deepcopy(merged)
    for text in overrides:
        keys, value = parse_override(text)
        apply_override(merged, keys, value)
    return base, merged


def load_config(
    template: str | Path | Mapping[str, Any],
    specified: Iterable[str | Path | Mapping[str, Any]] = (),
    overrides: Iterable[str] = (),
) -> Config:
    """Layer, validate and return the run config (``Config.raw`` holds the merged dict)."""
    _, merged = merge_layers(template, specified, overrides)
    config = from_dict(Config, merged, "config")
    config.raw = merged
    return config


def config_diff(base: Mapping[str, Any], merged: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Lines ``dotted.key: old -> new`` for every leaf that differs between the two dicts."""
    lines = []
    for key in sorted(set(base) | set(merged)):
        path = f"{prefix}{key}"
        old, new = base.get(key, "<unset>"), merged.get(key, "<unset>")
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            lines += config_diff(old, new, path + ".")
        elif old != new:
            lines.append(f"{path}: {json.dumps(old)} -> {json.dumps(new)}")
    return lines


# ----------------------------------------------------------------------------- validation


def from_dict(cls: type, data: Any, path: str) -> Any:
    """Build dataclass ``cls`` from ``data``, validating keys and types recursively."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected an object, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "raw"}
    for key in data:
        if key not in fields:
            hint = difflib.get_close_matches(key, fields, n=1)
            did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(
                f"{_join(path, key)}: unknown key. Allowed: {', '.join(fields)}.{did_you_mean}"
            )
    values = {}
    for name, fld in fields.items():
        if name not in data:
            if fld.default is dataclasses.MISSING and fld.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{_join(path, name)}: required key is missing")
            continue
        values[name] = _convert(data[name], hints[name], _join(path, name))
    return cls(**values)


def _join(path: str, key: str) -> str:
    return key if path == "config" else f"{path}.{key}"


def _convert(value: Any, annotation: Any, path: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Annotated:
        marker = args[1]
        check_value(value, args[0], path)
        own = dict(marker.own_keys)
        for key, own_type in own.items():
            if key in value:
                check_value(value[key], own_type, f"{path}.{key}")
        _registry(marker.registry).validate(value, path, marker.injected, tuple(own))
        return value
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, path)
    if origin in (typing.Union, __import__("types").UnionType) and value is not None:
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _convert(value, inner[0], path)
    if origin is list and args and _is_structured(args[0]):
        check_value(value, list, path)
        return [_convert(v, args[0], f"{path}.{i}") for i, v in enumerate(value)]
    if origin is dict and args and _is_structured(args[1]):
        check_value(value, dict, path)
        return {k: _convert(v, args[1], f"{path}.{k}") for k, v in value.items()}
    check_value(value, annotation, path)
    return value


def _is_structured(annotation: Any) -> bool:
    return typing.get_origin(annotation) is Annotated or dataclasses.is_dataclass(annotation)


def _registry(name: str) -> Any:
    from xcos import registry  # lazily: registry modules import the config module

    return getattr(registry, name)
