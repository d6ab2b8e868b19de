"""xCos models on onnxruntime: ``export_onnx`` writes one, ``OnnxScorer`` runs one.

The exported graph is the whole comparison of ``evaluation.evaluator.compare_images``: two
batches of normalised faces ``faces_a``, ``faces_b`` [N, 3, S, S] (N dynamic) go through one
backbone pass and the xCos head, and come out as ``xcos``, ``cos`` [N] and ``patch_cosine``,
``attention``, ``difference`` [N, h, w]. What a ``Verifier`` needs besides the graph (input
size, face template, cell edges, threshold, where the weights came from) travels in the
model's ``metadata_props`` under the key ``xcos`` as JSON, so a served ``.onnx`` file needs
neither the checkpoint nor the config.

Every export is checked before it is written: onnxruntime must reproduce PyTorch's outputs
on a few pairs within ``tolerance`` (1e-4), else nothing is written and the error names the
output and the difference.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from xcos.errors import CheckpointError, CheckpointNotFoundError, ConfigError, SetupError
from xcos.evaluation.evaluator import compare_images
from xcos.explain.verifier import MAP_KEYS, SCORE_KEYS, Verifier
from xcos.io_utils import atomic_write
from xcos.models.geometry import grid_edges
from xcos.models.xcos_model import XCosModel
from xcos.version import package_version

INPUT_NAMES = ("faces_a", "faces_b")
OUTPUT_NAMES = SCORE_KEYS + MAP_KEYS
METADATA_KEY = "xcos"
FORMAT = 1  # version of the metadata layout, bumped when a reader must tell layouts apart
DEFAULT_OPSET = 18
MIN_OPSET = 18
TOLERANCE = 1e-4
INSTALL_HINT = 'pip install -e ".[onnx]"'
NO_SPINNING = "session.intra_op.allow_spinning"


class PairComparison(nn.Module):
    """The exported graph: ``compare_images`` as a module of two tensor inputs and a tuple
    of outputs (the ONNX exporter takes neither dicts in nor dicts out)."""

    def __init__(self, model: XCosModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, faces_a: torch.Tensor, faces_b: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = compare_images(self.model, faces_a, faces_b)
        return tuple(outputs[key].float() for key in OUTPUT_NAMES)


@dataclass
class ExportReport:
    """What ``export_onnx`` wrote: the file, its opset and size, and the largest absolute
    difference between onnxruntime and PyTorch per output on the check pairs."""

    path: Path
    opset: int
    bytes: int
    max_diff: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def worst(self) -> float:
        return max(self.max_diff.values(), default=0.0)


def export_onnx(
    source: Verifier | XCosModel,
    path: str | Path,
    opset: int = DEFAULT_OPSET,
    threshold: float | None = None,
    threshold_source: str | None = None,
    check_faces: Sequence[np.ndarray] | None = None,
    tolerance: float = TOLERANCE,
) -> ExportReport:
    """Export ``source``'s model (a ``Verifier`` on PyTorch, or an ``XCosModel``) to ONNX at
    ``path`` with a dynamic batch, after checking it on onnxruntime against PyTorch.

    Args:
        source: a Verifier gives its threshold and provenance too; a bare model has none.
        opset: the ONNX opset (default 18).
        threshold: the decision threshold stored with the model (default: the Verifier's).
        threshold_source: where that threshold came from, stored for ``info``.
        check_faces: aligned RGB uint8 faces [S, S, 3] given as A, B, A, B, ... to check
            with; default: three pairs of seeded random faces.
        tolerance: largest absolute difference allowed on any output.

    Raises ``CheckpointError`` (nothing written) when an output differs by more than
    ``tolerance``; ``ConfigError`` for an opset the exporter cannot write; ``SetupError``
    when the ONNX packages are missing or onnxruntime cannot load the model.
    """
    ort = _export_modules()
    check_opset(opset)
    model, meta = _model_and_metadata(source, opset, threshold, threshold_source)
    module = PairComparison(model).eval()
    proto = _trace(module, opset)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    data = proto.SerializeToString()
    try:
        session = _session(ort, data)
    except Exception as err:  # onnxruntime's errors share no public base class
        raise SetupError(
            f"onnxruntime {ort.__version__} cannot load the exported model (opset {opset}): "
            f"{str(err).strip()[:300]}; try another --opset or a newer onnxruntime"
        ) from err
    inputs = _check_inputs(check_faces, model.input_size)
    max_diff = compare_runtimes(module, session, inputs)
    for name, diff in max_diff.items():
        if not diff <= tolerance:  # also catches NaN
            raise CheckpointError(
                f"--onnx {str(path)!r}: onnxruntime does not reproduce PyTorch: {name!r} "
                f"differs by {diff:.3g} (> {tolerance:g}) on {len(inputs[0])} check pairs; "
                f"nothing was written (torch {torch.__version__}, onnxruntime "
                f"{ort.__version__}, opset {opset}; try another --opset)"
            )
    with atomic_write(path) as stream:  # only a checked model reaches the disk
        stream.write(data)
    return ExportReport(Path(path), opset, len(data), max_diff, meta)


def _export_modules() -> Any:
    """onnxruntime, for the check, once the exporter's own dependencies are known to import
    (torch imports them lazily, deep inside the export, with a less helpful error)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise SetupError(
            f"exporting to ONNX needs onnx, onnxscript and onnxruntime ({err}); install them "
            f"with `{INSTALL_HINT}`"
        ) from err
    return onnxruntime


def check_opset(opset: int) -> None:
    """The opsets the exporter writes natively: from 18 (older ones go through a version
    converter that may silently leave the model at 18) to the newest the installed onnx
    package knows."""
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise ConfigError(
            f"--opset: expected {MIN_OPSET} to {newest} (onnx {onnx.__version__}), got {opset}"
        )


def _model_and_metadata(
    source: Verifier | XCosModel,
    opset: int,
    threshold: float | None,
    threshold_source: str | None,
) -> tuple[XCosModel, dict[str, Any]]:
    """The model on CPU in eval mode (a copy when it lives elsewhere, so the caller's model
    stays where it is) and the metadata stored with it."""
    if isinstance(source, Verifier):
        model, provenance = source.model, dict(source.provenance)
        if model is None:
            raise CheckpointError("export_onnx: this Verifier runs no PyTorch model to export")
        if threshold is None:
            threshold = source.threshold
            threshold_source = threshold_source or provenance.get("threshold_source")
    else:
        model, provenance = source, {}
    if next(model.parameters()).device.type != "cpu":
        model = copy.deepcopy(model).cpu()
    model.eval()
    edges = grid_edges(model.backbone, model.input_size)
    cells = len(edges) - 1
    meta = {
        "format": FORMAT,
        "input_size": model.input_size,
        "face_template": model.face_template,
        "cell_edges": [float(edge) for edge in edges],
        "grid": [cells, cells],
        "threshold": None if threshold is None else float(threshold),
        "threshold_source": threshold_source if threshold is not None else None,
        "backbone": provenance.get("backbone", type(model.backbone).__name__),
        "checkpoint": provenance.get("checkpoint"),
        "checkpoint_sha256": provenance.get("checkpoint_sha256"),
        "opset": opset,
        "inputs": list(INPUT_NAMES),
        "outputs": list(OUTPUT_NAMES),
        "xcos_version": package_version(),
        "torch_version": torch.__version__,
    }
    return model, meta


def _trace(module: PairComparison, opset: int) -> Any:
    """The ONNX ``ModelProto`` of ``module`` with a dynamic batch dimension."""
    import torch.onnx

    size = module.model.input_size
    # Two pairs: a batch of 1 would be specialised to a constant by torch.export.
    example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1)
    # The exporter talks (progress lines, a warning about the shared axis name): none of it
    # is the user's concern, and a real failure still raises.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        with torch.no_grad():
            program = torch.onnx.export(
                module,
                (example, example.flip(0)),
                dynamo=True,
                opset_version=opset,
                input_names=list(INPUT_NAMES),
                output_names=list(OUTPUT_NAMES),
                dynamic_shapes=({0: batch}, {0: batch}),
                verbose=False,
            )
    proto = program.model_proto
    written = {entry.domain: entry.version for entry in proto.opset_import}.get("")
    if written != opset:  # a failed version conversion only logs, and keeps the old opset
        raise SetupError(
            f"--opset {opset}: the exporter wrote opset {written} instead; use another --opset"
        )
    return proto


def _check_inputs(faces: Sequence[np.ndarray] | None, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``faces_a``, ``faces_b`` [N, 3, S, S] float32: the caller's faces normalised as the
    scorer does it, else 3 pairs of seeded random faces in the normalised range."""
    if faces:
        return normalised_pairs(faces, size)
    generator = torch.Generator().manual_seed(0)
    batch = (torch.rand(6, 3, size, size, generator=generator) * 2 - 1).numpy()
    return np.ascontiguousarray(batch[0::2]), np.ascontiguousarray(batch[1::2])


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


def compare_runtimes(
    module: nn.Module, session: Any, inputs: tuple[np.ndarray, np.ndarray]
) -> dict[str, float]:
    """Largest absolute difference per output between ``module`` on PyTorch and
    ``session`` on onnxruntime, on the same inputs ``faces_a``, ``faces_b`` [N, 3, S, S]."""
    with torch.no_grad():
        expected = module(*(torch.from_numpy(array) for array in inputs))
    got = session.run(list(OUTPUT_NAMES), dict(zip(INPUT_NAMES, inputs, strict=True)))
    return {
        name: float(np.max(np.abs(np.asarray(out, np.float64) - ref.double().numpy())))
        for name, ref, out in zip(OUTPUT_NAMES, expected, got, strict=True)
    }


def _session(
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


def _import_onnxruntime() -> Any:
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
    ``_session``). Its threads do not spin by default (``NO_SPINNING``): onnxruntime's idle
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
        ort = _import_onnxruntime()
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointNotFoundError(f"--onnx {str(path)!r}: no such file")
        try:
            settings = {NO_SPINNING: "0", **(config or {})}
            self.session = _session(ort, str(self.path), providers, threads, settings)
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
