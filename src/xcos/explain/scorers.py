"""How a ``Verifier`` runs its model: a ``PairScorer`` on PyTorch (``TorchScorer``) or on
onnxruntime (``OnnxScorer``, a model written by ``xcos.explain.onnx.export_onnx``), with the
same inputs (aligned RGB uint8 faces) and outputs (``SCORE_KEYS`` and ``MAP_KEYS`` arrays).

The exported graph's contract lives here, beside the scorer that reads it: inputs
``faces_a``, ``faces_b`` [N, 3, S, S] (normalised), outputs ``OUTPUT_NAMES``, and what a
Verifier needs besides the graph (input size, face template, cell edges, threshold,
provenance) as JSON in the model's ``metadata_props`` under ``METADATA_KEY``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from xcos.errors import CheckpointError, CheckpointNotFoundError, SetupError
from xcos.evaluation.evaluator import MAP_KEYS, SCORE_KEYS, compare_faces
from xcos.models.geometry import grid_edges
from xcos.models.xcos_model import XCosModel
from xcos.runtime import resolve_device

INPUT_NAMES = ("faces_a", "faces_b")
OUTPUT_NAMES = SCORE_KEYS + MAP_KEYS
METADATA_KEY = "xcos"
INSTALL_HINT = 'pip install -e ".[onnx]"'
NO_SPINNING = "session.intra_op.allow_spinning"


@runtime_checkable
class PairScorer(Protocol):
    """What the ``Verifier`` runs a model through: PyTorch (``TorchScorer``) or onnxruntime
    (``OnnxScorer``)."""

    input_size: int
    face_template: str
    cell_edges: np.ndarray  # [h + 1] pixel edges of the grid cells on a face

    def compare(self, faces: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """RGB uint8 faces [S, S, 3] given as A, B, A, B, ... -> ``SCORE_KEYS`` [N] and
        ``MAP_KEYS`` [N, h, w] float32 arrays, in one pass of the backbone."""
        ...

    def runtime_info(self) -> dict[str, Any]:
        """``runtime``, ``backbone`` and ``grid`` ([h, w]), for ``Verifier.info``."""
        ...


class TorchScorer:
    """A ``PairScorer`` running an ``XCosModel`` with PyTorch on ``device``, without
    gradients."""

    def __init__(self, model: XCosModel, device: str | torch.device = "auto") -> None:
        self.device = resolve_device(str(device))
        self.model = model.to(self.device).eval()
        self.input_size = model.input_size
        self.face_template = model.face_template
        self.cell_edges = grid_edges(model.backbone, model.input_size)

    def compare(self, faces: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        return compare_faces(self.model, faces, self.device)

    def runtime_info(self) -> dict[str, Any]:
        cells = len(self.cell_edges) - 1
        return {
            "runtime": f"torch {torch.__version__} ({self.device.type})",
            "backbone": type(self.model.backbone).__name__,
            "grid": [cells, cells],
        }


def normalised_pairs(faces: Sequence[np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 faces [S, S, 3] given as A, B, A, B, ... -> ``faces_a``, ``faces_b``
    [N, 3, S, S] float32, normalised as ``xcos.data.images.to_tensor`` does it,
    (x / 255 - 0.5) / 0.5, in numpy: onnxruntime needs no torch tensor."""
    batch = np.stack([np.asarray(face, dtype=np.uint8) for face in faces])
    if batch.shape[1:] != (size, size, 3) or len(batch) % 2:
        raise ValueError(
            f"expected pairs of {size}x{size} RGB faces, got an array of {batch.shape}"
        )
    normalised = batch.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(127.5)
    normalised -= np.float32(1.0)
    return np.ascontiguousarray(normalised[0::2]), np.ascontiguousarray(normalised[1::2])


def onnx_session(
    ort: Any,
    model: str | bytes,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    config: dict[str, str] | None = None,
) -> Any:
    """An onnxruntime session on CPU (or ``providers``), with ``threads`` intra-op threads
    (default: onnxruntime's, one per core) and ``config`` entries (``SessionOptions.
    add_session_config_entry``), its warnings kept quiet."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the optimizer's notes are not for users
    if threads:
        options.intra_op_num_threads = threads
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(
        model, sess_options=options, providers=list(providers or ["CPUExecutionProvider"])
    )


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as err:
        raise SetupError(
            f"running an ONNX model needs onnxruntime ({err}); install it with `{INSTALL_HINT}`"
        ) from err
    return onnxruntime


class OnnxScorer:
    """A ``PairScorer`` running a model written by ``export_onnx`` (``xcos export --onnx``)
    on onnxruntime: the same inputs and outputs as ``TorchScorer``.

    ``providers``, ``threads`` and ``config`` tune the onnxruntime session (see
    ``onnx_session``). Its threads do not spin by default (``NO_SPINNING``): onnxruntime's idle
    threads otherwise busy-wait after each run, taking the cores from whatever runs next in
    the process (MTCNN alignment, PyTorch).

    Attributes: ``input_size``, ``face_template``, ``cell_edges`` [h + 1], ``threshold``
    (stored at export, or None) and ``threshold_source``, ``provenance`` (``backbone``,
    ``checkpoint``, ``checkpoint_sha256``, ``opset``) and ``metadata`` (all of it).
    """

    def __init__(
        self,
        path: str | Path,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        config: dict[str, str] | None = None,
    ) -> None:
        ort = import_onnxruntime()
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointNotFoundError(f"--onnx {str(path)!r}: no such file")
        try:
            settings = {NO_SPINNING: "0", **(config or {})}
            self.session = onnx_session(ort, str(self.path), providers, threads, settings)
        except Exception as err:  # onnxruntime's errors share no public base class
            raise CheckpointError(
                f"--onnx {str(path)!r}: not an ONNX model onnxruntime can load "
                f"({type(err).__name__}: {str(err).strip()[:200]})"
            ) from err
        self.metadata = self._read_metadata()
        self.input_size = int(self.metadata["input_size"])
        self.face_template = str(self.metadata["face_template"])
        self.cell_edges = np.asarray(self.metadata["cell_edges"], dtype=np.float64)
        stored = self.metadata.get("threshold")
        self.threshold = None if stored is None else float(stored)
        self.threshold_source = self.metadata.get("threshold_source")
        self.provenance = {
            key: self.metadata.get(key)
            for key in ("backbone", "checkpoint", "checkpoint_sha256", "opset")
        }
        self.runtime = f"onnxruntime {ort.__version__} ({self.session.get_providers()[0]})"

    def _read_metadata(self) -> dict[str, Any]:
        """The ``xcos`` metadata; an error naming the file when the model is not an xcos
        export (no metadata, or not the inputs and outputs xcos writes)."""
        text = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        inputs = [node.name for node in self.session.get_inputs()]
        outputs = [node.name for node in self.session.get_outputs()]
        if text is None or inputs != list(INPUT_NAMES) or not set(OUTPUT_NAMES) <= set(outputs):
            raise CheckpointError(
                f"--onnx {str(self.path)!r}: an ONNX model, but not one written by "
                f"`xcos export --onnx` (no '{METADATA_KEY}' metadata, or inputs {inputs} "
                f"instead of {list(INPUT_NAMES)}); export the checkpoint with "
                "`xcos export -p CHECKPOINT --onnx OUT.onnx`"
            )
        try:
            meta = json.loads(text)
            missing = {"input_size", "face_template", "cell_edges"} - set(meta)
        except (ValueError, TypeError) as err:
            missing = {f"readable JSON ({err})"}
        if missing:
            raise CheckpointError(
                f"--onnx {str(self.path)!r}: its '{METADATA_KEY}' metadata lacks "
                f"{', '.join(sorted(missing))}; export it again with `xcos export --onnx`"
            )
        return meta

    def compare(self, faces: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """RGB uint8 faces [S, S, 3] given as A, B, A, B, ... -> ``SCORE_KEYS`` [N] and
        ``MAP_KEYS`` [N, h, w] float32 arrays, in one run of the graph."""
        feeds = dict(zip(INPUT_NAMES, normalised_pairs(faces, self.input_size), strict=True))
        outputs = self.session.run(list(OUTPUT_NAMES), feeds)
        return {
            name: np.asarray(out, np.float32)
            for name, out in zip(OUTPUT_NAMES, outputs, strict=True)
        }

    def runtime_info(self) -> dict[str, Any]:
        cells = len(self.cell_edges) - 1
        return {
            "runtime": self.runtime,
            "backbone": self.metadata.get("backbone"),
            "grid": list(self.metadata.get("grid") or [cells, cells]),
        }
