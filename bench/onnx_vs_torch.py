"""Throughput of an exported xCos model on onnxruntime vs the same model on PyTorch, CPU.

Each checkpoint is exported as `xcos export --onnx` does (into a temporary folder, checked
against PyTorch on the way), then both scorers a ``Verifier`` can run on compare the same
batches of aligned uint8 faces: ``TorchScorer.compare`` (PyTorch, no gradients) and
``OnnxScorer.compare`` (onnxruntime, CPUExecutionProvider), normalisation included, as the
server calls them. The two run in turn round by round (``timing.interleave``); medians are
reported as pairs per second and their ratio (onnxruntime / PyTorch: above 1, onnxruntime is
faster).

    python bench/onnx_vs_torch.py [-p CKPT ...] [--batch 1 16] [--rounds 9]

Default: the demo checkpoint (saved/demo/checkpoints/best.pth) and, when present, the dlib
one (saved/dlib/checkpoints/best.pth).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from timing import interleave, median

from xcos.explain.onnx import export_onnx
from xcos.explain.scorers import OnnxScorer
from xcos.explain.verifier import Verifier

CHECKPOINTS = ("saved/demo/checkpoints/best.pth", "saved/dlib/checkpoints/best.pth")


def random_faces(pairs: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """2 x ``pairs`` RGB uint8 faces [S, S, 3] (A, B, A, B, ...); content does not change the
    work of either runtime."""
    rng = np.random.default_rng(seed)
    return list(rng.integers(0, 256, (2 * pairs, size, size, 3), dtype=np.uint8))


def measure(checkpoint: str, batches: list[int], rounds: int) -> list[dict]:
    """Pairs per second of both runtimes at each batch size, for one checkpoint."""
    verifier = Verifier.from_checkpoint(checkpoint, device="cpu")
    with tempfile.TemporaryDirectory() as folder:
        report = export_onnx(verifier, Path(folder) / "model.onnx")
        # As many threads as PyTorch; they do not spin (OnnxScorer's default), so they
        # leave the cores to PyTorch's turn that follows. The session holds the model: the
        # file may go.
        scorer = OnnxScorer(report.path, threads=torch.get_num_threads())
    rows = []
    for pairs in batches:
        faces = random_faces(pairs, verifier.input_size)
        works = {
            "torch": lambda faces=faces: verifier.scorer.compare(faces),
            "onnxruntime": lambda faces=faces: scorer.compare(faces),
        }
        times = interleave(works, torch.device("cpu"), rounds)
        speed = {name: pairs / median(seconds) for name, seconds in times.items()}
        rows.append(
            {
                "model": f"{verifier.info['backbone']} {verifier.input_size}px",
                "pairs": pairs,
                **speed,
                "ratio": speed["onnxruntime"] / speed["torch"],
                "max_diff": report.worst,
            }
        )
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = [
        f"{'model':<18} {'batch':>5} {'torch pairs/s':>14} {'ort pairs/s':>12} "
        f"{'ort / torch':>11} {'max diff':>9}"
    ]
    for row in rows:
        lines.append(
            f"{row['model']:<18} {row['pairs']:>5} {row['torch']:>14.1f} "
            f"{row['onnxruntime']:>12.1f} {row['ratio']:>10.2f}x {row['max_diff']:>9.1e}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "-p", "--pretrained", nargs="+", help="xcos checkpoints (default: demo, dlib)"
    )
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16], help="pairs per call")
    parser.add_argument("--rounds", type=int, default=9, help="timed rounds (medians)")
    args = parser.parse_args()
    checkpoints = args.pretrained or [path for path in CHECKPOINTS if Path(path).is_file()]
    rows = [row for path in checkpoints for row in measure(path, args.batch, args.rounds)]
    print(
        f"torch {torch.__version__} ({torch.get_num_threads()} threads) vs onnxruntime "
        f"{onnxruntime.__version__} (CPUExecutionProvider, as many threads, no spinning), CPU, "
        f"median of {args.rounds} interleaved rounds"
    )
    print(format_rows(rows))


if __name__ == "__main__":
    main()
