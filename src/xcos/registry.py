"""Registries: one per component kind, filled by a decorator, built from config dicts.

``build(cfg, path)`` pops ``type`` and calls the registered class with the remaining keys, so
the constructor signature is the schema: unknown or missing keys and wrong types fail with the
dotted config path before anything is constructed.

Each registry names the modules that fill it (``locations``, as mmengine's registries do) and
imports them on its first look-up (``get``, ``build``, ``names``, ``in``): adding a component is
one decorator in its own module plus, for a new module, its path in ``locations`` below.
Importing this module imports no component (and no torch), so a component module can import it
without a cycle.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from xcos.config_types import check_value
from xcos.errors import ConfigError, XcosError

T = TypeVar("T")


class Registry:
    """A named mapping from ``type`` strings to classes or factory functions."""

    def __init__(self, kind: str, locations: tuple[str, ...] = ()) -> None:
        self.kind = kind
        #: Modules whose import registers this registry's built-in entries.
        self.locations = locations
        self._entries: dict[str, Callable[..., Any]] = {}
        self._imported = False

    def import_locations(self) -> None:
        """Import ``locations`` once (their decorators fill the registry)."""
        if self._imported:
            return
        self._imported = True  # set first: a location may look itself up while importing
        try:
            for module in self.locations:
                importlib.import_module(module)
        except BaseException:
            self._imported = False
            raise

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator that registers a class or function under ``name`` (default: its __name__)."""

        def decorate(obj: T) -> T:
            key = name or obj.__name__  # type: ignore[attr-defined]
            if key in self._entries:
                old = self._entries[key]
                raise KeyError(
                    f"{self.kind} registry: {key!r} is registered twice "
                    f"({old.__module__}.{old.__qualname__} and "
                    f"{obj.__module__}.{obj.__qualname__})"  # type: ignore[attr-defined]
                )
            self._entries[key] = obj  # type: ignore[assignment]
            return obj

        return decorate

    def add(self, name: str, obj: Callable[..., Any]) -> None:
        """Register ``obj`` under ``name`` without the decorator syntax."""
        self.register(name)(obj)

    def names(self) -> list[str]:
        self.import_locations()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self.import_locations()
        return name in self._entries

    def get(self, name: str, path: str = "type") -> Callable[..., Any]:
        """The entry called ``name``; an unknown name fails with choices and a close match."""
        self.import_locations()
        if name not in self._entries:
            hint = difflib.get_close_matches(str(name), self._entries, n=1)
            did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(
                f"{path}: unknown {self.kind} {name!r}. "
                f"Registered: {', '.join(self.names())}.{did_you_mean}"
            )
        return self._entries[name]

    def validate(
        self,
        cfg: Mapping[str, Any],
        path: str,
        injected: tuple[str, ...] = (),
        own_keys: tuple[str, ...] = (),
    ) -> None:
        """Check ``cfg`` against the registered constructor without building anything.

        ``injected`` keys are supplied by code at build time (not required in the config);
        ``own_keys`` are read by the framework itself and never reach the constructor.
        """
        if not isinstance(cfg, Mapping):
            raise ConfigError(f"{path}: expected an object with a 'type' key, got {cfg!r}")
        if "type" not in cfg:
            raise ConfigError(f"{path}.type: missing; choose one of {', '.join(self.names())}")
        factory = self.get(cfg["type"], f"{path}.type")
        kwargs = {k: v for k, v in cfg.items() if k != "type" and k not in own_keys}
        for key in injected:
            if key in kwargs:
                raise ConfigError(f"{path}.{key}: set by xcos itself; remove it from the config")
        check_kwargs(factory, kwargs, path, injected)

    def build(
        self, cfg: Mapping[str, Any], path: str, own_keys: tuple[str, ...] = (), **extra: Any
    ) -> Any:
        """Build the entry named by ``cfg['type']`` with the other keys (plus ``extra``)."""
        self.validate(cfg, path, tuple(extra), own_keys)
        kwargs = {k: v for k, v in cfg.items() if k != "type" and k not in own_keys}
        kwargs.update(extra)
        try:
            return self._entries[cfg["type"]](**kwargs)
        except XcosError:
            raise
        except ValueError as err:  # a constructor refusing a value the config gave it
            raise ConfigError(f"{path} ({cfg['type']}): {err}") from err


def check_kwargs(
    factory: Callable[..., Any],
    kwargs: Mapping[str, Any],
    path: str,
    injected: tuple[str, ...] = (),
) -> None:
    """Validate config ``kwargs`` against the signature and type hints of ``factory``."""
    target = factory.__init__ if inspect.isclass(factory) else factory
    signature = inspect.signature(target)
    try:
        hints = inspect.get_annotations(target, eval_str=True)
    except (NameError, TypeError):
        hints = {}
    params = {
        n: p
        for n, p in signature.parameters.items()
        if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    for key, value in kwargs.items():
        if key not in params:
            if accepts_any:
                continue
            hint = difflib.get_close_matches(key, params, n=1)
            did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
            allowed = ", ".join(n for n in params if n not in injected) or "(none)"
            raise ConfigError(f"{path}.{key}: unknown key. Allowed: {allowed}.{did_you_mean}")
        if key in hints:
            check_value(value, hints[key], f"{path}.{key}")
    for name, param in params.items():
        if param.default is param.empty and name not in kwargs and name not in injected:
            raise ConfigError(f"{path}.{name}: required key is missing")


BACKBONES = Registry("backbone", ("xcos.models.backbones",))
HEADS = Registry("head", ("xcos.models.xcos_head",))
IDENTITY_HEADS = Registry("identity head", ("xcos.models.margin",))
TARGETS = Registry("target", ("xcos.models.targets",))
LOSSES = Registry("loss", ("xcos.losses",))
METRICS = Registry("metric", ("xcos.evaluation.verification", "xcos.evaluation.roc"))
DATASETS = Registry(
    "dataset",
    ("xcos.data.image_folder", "xcos.data.lfw_people", "xcos.data.shards", "xcos.data.rec_pairs"),
)
PAIR_SETS = Registry(
    "pair set",
    ("xcos.data.pair_sets", "xcos.data.lfw", "xcos.data.insightface_bin", "xcos.data.pack"),
)
OPTIMIZERS = Registry("optimizer", ("xcos.engine.optim",))
SCHEDULERS = Registry("scheduler", ("xcos.engine.optim",))
GENERATORS = Registry("data generator", ("xcos.data.generators",))
