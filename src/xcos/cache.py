"""Where xcos keeps what it derives once and reuses: aligned faces, packs, backbone outputs."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir`` if given, else ``$XCOS_CACHE`` if set and not empty, else ``~/.cache/xcos``."""
    return Path(cache_dir or os.environ.get("XCOS_CACHE") or Path.home() / ".cache" / "xcos")
