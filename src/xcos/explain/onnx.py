"""Export an xCos model to ONNX: ``export_onnx`` writes one, ``xcos.explain.scorers.OnnxScorer``
runs one.

The exported graph is the whole comparison of ``evaluation.evaluator.compare_images``: two
batches of normalised faces ``faces_a``, ``faces_b`` [N, 3, S, S] (N dynamic) go through one
backbone pass and the xCos head, and come out as ``xcos``, ``cos`` [N] and ``patch_cosine``,
``attention``, ``difference`` [N, h, w]. What a ``Verifier`` needs besides the graph (input
size, face template, cell edges, threshold, where the weights came from) travels in the
model's ``metadata_props`` under the key ``xcos`` as JSON, so a served ``.onnx`` file needs
neither the checkpoint nor the config (the contract: ``xcos.explain.scorers``).

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

from xcos.errors import CheckpointError, ConfigError, SetupError
from xcos.evaluation.evaluator import compare_images
from xcos.explain.scorers import (
    INPUT_NAMES,
    INSTALL_HINT,
    METADATA_KEY,
    OUTPUT_NAMES,
    normalised_pairs,
    onnx_session,
)
from xcos.explain.verifier import Verifier
from xcos.io_utils import atomic_write
from xcos.models.geometry import grid_edges
from xcos.models.xcos_model import XCosModel
from xcos.version import package_version

FORMAT = 1  # version of the metadata layout, bumped when a reader must tell layouts apart
DEFAULT_OPSET = 18
MIN_OPSET = 18
TOLERANCE = 1e-4


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
        session = onnx_session(ort, data)
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
