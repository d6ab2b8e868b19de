"""Build a face aligner from settings: MTCNN (``FaceAligner``, the default) or dlib's own
pipeline (``DlibAligner``), chosen by the ``"aligner"`` key.

Every place that takes alignment settings (``xcos prepare``, a pair set's ``align``, the
``align`` of ``lfw_people_pairs``) goes through ``make_aligner``, so one key switches all of
them. The ``"aligner"`` key itself never reaches ``FaceAligner``: MTCNN's settings, and with
them the cache keys of faces already aligned, stay what they were.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from xcos.errors import ConfigError
from xcos.registry import check_kwargs

__all__ = ["ALIGNERS", "aligner_class", "make_aligner"]

#: The aligners by name; the first is the default.
ALIGNERS = ("mtcnn", "dlib")


def aligner_class(name: Any, where: str = "align") -> type:
    """The class of aligner ``name`` (``"mtcnn"`` or ``"dlib"``); errors name ``where``."""
    if name == "mtcnn":
        from xcos.data.align import FaceAligner

        return FaceAligner
    if name == "dlib":
        from xcos.data.dlib_align import DlibAligner

        return DlibAligner
    raise ConfigError(f"{where}.aligner: expected one of {', '.join(ALIGNERS)}, got {name!r}")


def make_aligner(settings: Mapping[str, Any] | None = None, where: str = "align") -> Any:
    """``FaceAligner(**settings)`` or ``DlibAligner(**settings)`` by ``settings["aligner"]``
    (default ``"mtcnn"``; the key is removed before the call).

    Raises:
        ConfigError: an unknown aligner, an unknown key (named ``where.key``, with the keys that
            aligner takes), a value of the wrong type or out of range.
        SetupError: the dlib aligner without dlib or its model files installed.
    """
    settings = dict(settings or {})
    kind = settings.pop("aligner", ALIGNERS[0])
    factory = aligner_class(kind, where)
    check_kwargs(factory, settings, where)
    try:
        return factory(**settings)
    except ValueError as err:  # a value out of range: name where it came from
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{where} ({kind} aligner): {err}") from err
