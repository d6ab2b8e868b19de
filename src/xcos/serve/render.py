"""The JSON body of a verified pair: ``Explanation.as_dict()`` plus figures and faces as
base64 PNGs. Runs in a worker thread (drawing takes tens of milliseconds). The figures are
plain matplotlib ``Figure`` objects drawn by Agg, never pyplot: no display, no global state."""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from xcos.explain.explanation import Explanation

# Matplotlib is not thread-safe (its font cache, text layout): one figure drawn at a time.
_DRAWING = threading.Lock()


def png_base64(image: np.ndarray) -> str:
    """An RGB uint8 array [H, W, 3] as a base64 PNG."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def figure_base64(explanation: Explanation, layout: str) -> str:
    """The explanation's figure in ``layout`` as a base64 PNG."""
    buffer = io.BytesIO()
    with _DRAWING:
        figure = explanation.figure(layout)
        try:
            figure.savefig(buffer, format="png", bbox_inches="tight")
        finally:
            figure.clear()  # a plain Figure (no pyplot): clearing frees it at once
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def explanation_body(
    explanation: Explanation, layouts: Sequence[str] = (), faces: bool = False
) -> dict[str, Any]:
    """``as_dict()`` plus ``figures`` {layout: base64 PNG} for ``layouts`` and, when
    ``faces``, ``faces`` {"a", "b"}: the aligned faces compared, as base64 PNGs."""
    body = explanation.as_dict()
    body["figures"] = {layout: figure_base64(explanation, layout) for layout in layouts}
    if faces:
        body["faces"] = {
            key: png_base64(face) for key, face in zip("ab", explanation.faces, strict=True)
        }
    return body
