"""Type checking of plain JSON config values against Python annotations."""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from typing import Any

from xcos.errors import ConfigError


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def check_value(value: Any, annotation: Any, path: str) -> None:
    """Raise ConfigError when ``value`` (parsed JSON) does not fit ``annotation``."""
    if not _fits(value, annotation):
        raise ConfigError(
            f"{path}: expected {_type_name(annotation)}, got {type(value).__name__} {value!r}"
        )


def _fits(value: Any, annotation: Any) -> bool:
    if annotation is Any or annotation is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if origin is typing.Literal:
        return value in args
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (list, collections.abc.Sequence, tuple) or annotation in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(args) == len(value) and all(map(_fits, value, args))
        item = args[0] if args else Any
        return all(_fits(v, item) for v in value)
    if origin in (dict, collections.abc.Mapping) or annotation in (dict,):
        if not isinstance(value, dict):
            return False
        key_t, val_t = args if args else (Any, Any)
        return all(_fits(k, key_t) and _fits(v, val_t) for k, v in value.items())
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True  # annotations we cannot check (forward refs, protocols) are accepted
