"""The version of xcos, written here and nowhere else: ``pyproject.toml`` reads it from this
file when the package is built (``[tool.setuptools.dynamic]``), ``xcos.__version__`` is this
value, and the command line, the HTTP API and ONNX exports report it."""

from __future__ import annotations

__version__ = "0.1.0"


def package_version() -> str:
    """The version of the xcos being run: this source tree's, also where the installed
    distribution's metadata is older (an editable install made before a version change)."""
    return __version__
