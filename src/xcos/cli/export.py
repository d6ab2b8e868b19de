"""``xcos export``: an xcos checkpoint as an ONNX model for onnxruntime (``xcos serve --onnx``,
``Verifier.from_onnx``), checked against PyTorch before it is written."""

from __future__ import annotations

import argparse
import time

from xcos.cli.common import Command

DESCRIPTION = (
    "Export the backbone and the xCos head of a checkpoint to ONNX (dynamic batch): inputs "
    "faces_a, faces_b [N, 3, S, S], outputs xcos, cos [N] and patch_cosine, attention, "
    "difference [N, h, w]. The input size, face template, cell edges and decision threshold "
    "are stored in the model. onnxruntime must reproduce PyTorch within 1e-4 on a few pairs, "
    "else nothing is written."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-p", "--pretrained", required=True, help="an xcos checkpoint")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--onnx", help="the ONNX file to write (e.g. model.onnx)")
    target.add_argument(
        "--builtin",
        help="write a built-in model file instead (xcos.explain.builtin: the head, its config "
        "and validation threshold, without the frozen recognizer's weights)",
    )
    parser.add_argument(
        "--trained-on", help="with --builtin: what the head was trained on, in words (required)"
    )
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default: 18)")
    parser.add_argument(
        "--threshold", type=float, help="decision threshold on the xCos score to store"
    )
    parser.add_argument(
        "--metrics", help="store the threshold of a test run's metrics.json instead"
    )


def run(args: argparse.Namespace) -> int:
    """Export, check and write; one summary line. Errors are ``XcosError`` (exit 2)."""
    from xcos.explain.onnx import export_onnx
    from xcos.explain.verifier import Verifier

    if args.builtin:
        return write_builtin_model(args)
    start = time.perf_counter()
    verifier = Verifier.from_checkpoint(args.pretrained, args.threshold, args.metrics, "cpu")
    report = export_onnx(verifier, args.onnx, opset=args.opset)
    threshold = report.metadata["threshold"]
    stored = (
        "no threshold (give one with --threshold when serving)"
        if threshold is None
        else f"threshold {threshold:.4f}"
    )
    print(
        f"{report.path}: opset {report.opset}, {report.bytes / 2**20:.1f} MiB, {stored}, "
        f"onnxruntime vs PyTorch max diff {report.worst:.2g} (<= 1e-4), "
        f"{time.perf_counter() - start:.1f} s"
    )
    return 0


def write_builtin_model(args: argparse.Namespace) -> int:
    from xcos.errors import ConfigError
    from xcos.explain.builtin import write_builtin

    if not args.trained_on:
        raise ConfigError("--builtin needs --trained-on: what the head was trained on")
    path = write_builtin(args.pretrained, args.builtin, args.trained_on)
    print(f"{path}: built-in model, {path.stat().st_size / 2**10:.0f} KiB")
    return 0


COMMAND = Command(
    "export", "export a checkpoint to ONNX for onnxruntime", DESCRIPTION, add_arguments, run
)
