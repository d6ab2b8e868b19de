"""The version of xcos being run: the command line, the HTTP API and ONNX exports report it."""

from __future__ import annotations

from importlib import metadata


def package_version() -> str:
    """The installed distribution's version, else ``xcos.__version__`` (a source checkout)."""
    try:
        return metadata.version("xcos")
    except metadata.PackageNotFoundError:
        import xcos

        return getattr(xcos, "__version__", "unknown")
