"""Face alignment throughput on LFW: today's detector and ours, side by side in one run.

Each variant aligns the same LFW images (onto dlib's 150 px chip, LFW's settings: the central
face, a centred crop when none is found) through ``xcos.data.prepare.align_images``, the path
that ``xcos prepare`` and the LFW caches use, in a child process of its own so that its peak
memory is its own. Variants run in turn, round after round (A B C D, D C B A, ...), and the
median round counts. The script prints images/s, the ratio to the first variant, peak RSS,
and how many images' chosen-face landmarks lie within 1 px of the first variant's.

    python bench/align.py [--lfw ../shared/data/lfw] [--images 1500] [--rounds 2]
    python bench/align.py --networks     # the R- and O-Net alone: NCHW, channels-last, ONNX

Variants:
    facenet     facenet-pytorch's own cascade (``MTCNN.detect``), the smallest face 20 px,
                one stream (PyTorch's default threads): the detector before this bench
    cascade     xcos.data.mtcnn.MTCNNDetector (batched), the same settings, one stream
    cascade-2w  the same, two worker threads with one PyTorch thread each
    lfw         LFW's settings as shipped (smallest face ``LFW_MIN_FACE``), default workers
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VARIANTS = {
    "facenet": {"detector": "facenet", "min_face_size": 20, "workers": 1},
    "cascade": {"detector": "cascade", "min_face_size": 20, "workers": 1},
    "cascade-2w": {"detector": "cascade", "min_face_size": 20, "workers": 2},
    "lfw": {"detector": "cascade", "min_face_size": None, "workers": None},
}


class FacenetDetector:
    """facenet-pytorch's ``MTCNN.detect`` behind ``MTCNNDetector.detect``'s interface."""

    def __init__(self, min_face_size: float) -> None:
        from facenet_pytorch import MTCNN

        self.mtcnn = MTCNN(min_face_size=min_face_size, keep_all=True).eval()

    def detect(self, images: np.ndarray) -> list:
        from xcos.data.mtcnn import Detections

        boxes, scores, landmarks = self.mtcnn.detect(images, landmarks=True)
        found = []
        for box, score, points in zip(boxes, scores, landmarks, strict=True):
            if box is None:
                found.append(Detections.empty())
            else:
                found.append(
                    Detections(
                        np.asarray(box, float), np.asarray(score, float), np.asarray(points, float)
                    )
                )
        return found


def run_child(variant: str, paths_file: str, out: str) -> None:
    """Align the listed images with ``variant``; write seconds and landmarks to ``out``."""
    import torch

    from xcos.data.align import FaceAligner
    from xcos.data.pair_sets import LFW_ALIGNMENT
    from xcos.data.prepare import align_images

    spec = VARIANTS[variant]
    settings = dict(LFW_ALIGNMENT, template="dlib", image_size=150)
    if spec["min_face_size"] is not None:
        settings["min_face_size"] = spec["min_face_size"]
    aligner = FaceAligner(**settings)
    if spec["detector"] == "facenet":
        aligner.detector = FacenetDetector(aligner.detector.min_face_size)
    landmarks: dict[str, np.ndarray] = {}
    align_batch = aligner.align_batch

    def recording(images, names=None):
        found = align_batch(images, names)
        for one in found:
            landmarks[one.name] = one.landmarks if one.landmarks is not None else np.nan
        return found

    aligner.align_batch = recording
    paths = Path(paths_file).read_text().split("\n")
    align_images(paths[:64], aligner, workers=1)  # warm-up: weights, first-call kernels
    start = time.perf_counter()
    align_images(paths, aligner, workers=spec["workers"])
    seconds = time.perf_counter() - start
    points = np.stack([np.broadcast_to(landmarks[p], (5, 2)) for p in paths])
    np.savez(out, seconds=seconds, landmarks=points, threads=torch.get_num_threads())


def run_variant(variant: str, paths_file: str, folder: str) -> tuple[float, int, np.ndarray]:
    """(seconds, peak RSS in bytes, landmarks) of one child run."""
    out = os.path.join(folder, f"{variant}.npz")
    command = [sys.executable, __file__, "--child", variant, "--paths", paths_file, "--out", out]
    child = subprocess.Popen(command)
    _, status, usage = os.wait4(child.pid, 0)
    if status != 0:
        raise SystemExit(f"{variant}: child failed with status {status}")
    result = np.load(out)
    return float(result["seconds"]), usage.ru_maxrss * 1024, result["landmarks"]


def network_works(network, side: int) -> dict:
    """Ways to run ``network`` on 1,000 random crops: name -> function."""
    import io

    import torch

    net = network().eval()
    crops = torch.randn(1000, 3, side, side)
    last = network().eval().to(memory_format=torch.channels_last)
    crops_last = crops.contiguous(memory_format=torch.channels_last)
    works = {"NCHW": lambda: net(crops), "channels-last": lambda: last(crops_last)}
    try:
        import onnxruntime
    except ImportError:
        return works
    buffer = io.BytesIO()
    torch.onnx.export(
        net, crops[:2], buffer, input_names=["x"], dynamic_axes={"x": {0: "n"}}, dynamo=False
    )
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(buffer.getvalue(), options)
    array = crops.numpy()
    works["onnxruntime"] = lambda: session.run(None, {"x": array})
    return works


def network_rates(rounds: int) -> None:
    """ms per 1,000 crops of the R- and O-Net, one thread: PyTorch NCHW (facenet-pytorch's
    way), PyTorch channels-last (ours), onnxruntime."""
    import torch
    from facenet_pytorch.models.mtcnn import ONet, RNet

    torch.set_num_threads(1)
    for network, side in ((RNet, 24), (ONet, 48)):
        works = network_works(network, side)
        times = {name: [] for name in works}
        with torch.inference_mode():
            for round_ in range(rounds + 1):  # the first round warms up
                for name in works if round_ % 2 else list(works)[::-1]:
                    start = time.perf_counter()
                    works[name]()
                    if round_:
                        times[name].append(time.perf_counter() - start)
        line = ", ".join(f"{n} {statistics.median(t) * 1000:.0f} ms" for n, t in times.items())
        print(f"{network.__name__} ({side} px), 1,000 crops, 1 thread: {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lfw", default=os.environ.get("XCOS_SHARED", "../shared") + "/data/lfw")
    parser.add_argument("--images", type=int, default=1500, help="LFW images, spread evenly")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--networks", action="store_true", help="time the R- and O-Net alone")
    parser.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--paths", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args.child, args.paths, args.out)
        return
    if args.networks:
        network_rates(max(args.rounds, 3))
        return
    everything = sorted((Path(args.lfw) / "images").glob("*/*.jpg"))
    if not everything:
        raise SystemExit(f"no LFW images under {args.lfw}/images")
    step = max(1, len(everything) // args.images)
    paths = [str(p) for p in everything[::step][: args.images]]
    seconds = {v: [] for v in args.variants}
    memory = dict.fromkeys(args.variants, 0)
    landmarks = {}
    with tempfile.TemporaryDirectory() as folder:
        paths_file = os.path.join(folder, "paths.txt")
        Path(paths_file).write_text("\n".join(paths))
        for round_ in range(args.rounds):
            order = args.variants if round_ % 2 == 0 else args.variants[::-1]
            for variant in order:
                took, peak, points = run_variant(variant, paths_file, folder)
                seconds[variant].append(took)
                memory[variant] = max(memory[variant], peak)
                landmarks[variant] = points
    report(args, paths, seconds, memory, landmarks)


def report(args, paths, seconds, memory, landmarks) -> None:
    from xcos.data.pair_sets import LFW_MIN_FACE

    first = args.variants[0]
    base_rate = len(paths) / statistics.median(seconds[first])
    print(f"{len(paths)} LFW images, {args.rounds} rounds, median round; {os.cpu_count()} CPUs")
    print(f"'lfw' = the shipped LFW settings, smallest face {LFW_MIN_FACE} px")
    print(f"{'variant':<12}{'img/s':>8}{'ratio':>8}{'peak RSS':>11}  landmarks within 1 px")
    for variant in args.variants:
        rate = len(paths) / statistics.median(seconds[variant])
        gap = np.abs(landmarks[variant] - landmarks[first]).max(axis=(1, 2))
        both = ~np.isnan(gap)
        within = np.mean(gap[both] <= 1.0)
        lost = int((np.isnan(gap) & ~np.isnan(landmarks[first]).any(axis=(1, 2))).sum())
        print(
            f"{variant:<12}{rate:>8.1f}{rate / base_rate:>7.2f}x{memory[variant] / 2**30:>9.2f} GiB"
            f"  {within:.2%} of {both.sum()}" + (f", {lost} faces no longer found" if lost else "")
        )
    print(json.dumps({v: [round(s, 2) for s in seconds[v]] for v in args.variants}))


if __name__ == "__main__":
    main()
