"""Evaluation throughput on LFW: our evaluator vs the original's way, side by side.

Ours embeds each distinct image once (LFW View 2: 7,701 images for 6,000 pairs) and compares
grid features per pair; the original forwarded both images of every pair (12,000 forwards).
Both run in this process on the same aligned pack, model and batch size, interleaved, and the
script prints pairs/s of each and their ratio, the time share of decoding + alignment vs the
forward pass, the alignment throughput, and the peak RSS of the process.

    python bench/evaluate_lfw.py [--lfw ../shared/data/lfw] [--config configs/demo_synthetic.json]
        [--align-sample 200] [--folds 0 1 ...]

The aligned pack is cached (``$XCOS_CACHE``, default ``~/.cache/xcos``), so only the first run
pays for the alignment of every image.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from xcos.config import load_config
from xcos.data.align import FaceAligner
from xcos.data.images import read_rgb
from xcos.data.lfw import read_lfw
from xcos.data.pack import read_pack
from xcos.data.pair_sets import LFW_ALIGNMENT, PairSet
from xcos.data.prepare import cached_pack, subset_folds
from xcos.evaluation.evaluator import evaluate_pair_set
from xcos.models.xcos_model import build_model


@torch.no_grad()
def original_way(model, pack: PairSet, batch_size: int) -> np.ndarray:
    """Forward both faces of every pair, batch by batch, as the original evaluation did."""
    scores = []
    faces = pack.images
    for start in range(0, len(pack), batch_size):
        pairs = pack.pairs[start : start + batch_size]
        a = torch.from_numpy(np.asarray(faces[pairs[:, 0]])).float().div_(127.5).sub_(1)
        b = torch.from_numpy(np.asarray(faces[pairs[:, 1]])).float().div_(127.5).sub_(1)
        scores.append(model.compare(model.embed(a), model.embed(b))["xcos"].numpy())
    return np.concatenate(scores)


def timed(function, *args):
    start = time.perf_counter()
    value = function(*args)
    return value, time.perf_counter() - start


def alignment_rates(pair_set: PairSet, aligner: FaceAligner, sample: int) -> tuple[float, float]:
    """(decode images/s, decode + detect + align images/s) on the first ``sample`` images."""
    paths = list(pair_set.images[:sample])
    _, decode = timed(lambda: [read_rgb(p) for p in paths])
    _, align = timed(aligner.align_batch, paths)
    return len(paths) / decode, len(paths) / align


def evaluate(pack_dir: str, config_path: str, batch: int) -> None:
    """Both evaluations on a prepared pack; run in its own process so its peak RSS is its own."""
    pack = read_pack(pack_dir, "lfw")
    config = load_config(config_path)
    torch.manual_seed(0)
    model = build_model(config.model, num_classes=10).eval()
    cpu = torch.device("cpu")
    rounds = {"ours": [], "original": []}
    rss_ours = 0.0
    for _ in range(2):  # interleaved, so machine noise hits both ways alike
        ours, seconds = timed(lambda: evaluate_pair_set(model, pack, cpu, batch_size=batch))
        rounds["ours"].append(seconds)
        rss_ours = rss_ours or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        theirs, seconds = timed(original_way, model, pack, batch)  # `batch` images per forward
        rounds["original"].append(seconds)
    assert np.allclose(ours.scores["xcos"], theirs, atol=1e-4), "both ways must give one score"
    ours_s, theirs_s = min(rounds["ours"]), min(rounds["original"])
    rss_all = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"LFW {len(pack)} pairs, {len(pack.images)} distinct images, model {config.model.backbone}"
    )
    print(f"ours (each image once):      {len(pack) / ours_s:8.1f} pairs/s ({ours_s:.1f} s)")
    print(f"original (both per pair):    {len(pack) / theirs_s:8.1f} pairs/s ({theirs_s:.1f} s)")
    print(f"speed-up:                    {theirs_s / ours_s:8.2f}x")
    print(f"forward (ours):              {len(pack.images) / ours_s:8.1f} images/s")
    print(f"peak RSS, our evaluation (before the original's way ran): {rss_ours:.0f} MiB")
    print(f"peak RSS, whole process after both ways: {rss_all:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lfw", default=str(Path(__file__).parents[1].parent / "shared/data/lfw"))
    parser.add_argument("--config", default="configs/demo_synthetic.json")
    parser.add_argument("--batch", type=int, default=64, help="images per forward pass")
    parser.add_argument("--align-sample", type=int, default=200)
    parser.add_argument("--folds", type=int, nargs="+", help="only these folds (default: all)")
    parser.add_argument("--evaluate", help=argparse.SUPPRESS)  # internal: a prepared pack
    args = parser.parse_args()
    if args.evaluate:
        evaluate(args.evaluate, args.config, args.batch)
        return
    lfw = Path(args.lfw)
    pair_set = read_lfw(str(lfw / "pairs.txt"), str(lfw / "images"))
    if args.folds:
        pair_set = subset_folds(pair_set, args.folds)
    aligner = FaceAligner(**LFW_ALIGNMENT)  # as test mode aligns LFW, so the cache is shared
    decode_rate, align_rate = alignment_rates(pair_set, aligner, args.align_sample)
    print(f"decode only:                 {decode_rate:8.1f} images/s")
    print(f"decode + detect + align:     {align_rate:8.1f} images/s", flush=True)
    folder = cached_pack(pair_set, aligner, [lfw / "pairs.txt"])
    command = [
        sys.executable,
        __file__,
        "--evaluate",
        str(folder),
        "--config",
        args.config,
        "--batch",
        str(args.batch),
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    print(output, end="")
    forward = float(output.split("forward (ours):")[1].split()[0])
    share = (1 / align_rate) / (1 / align_rate + 1 / forward)
    print(f"time share of decode+align when evaluating from image files: {share * 100:.1f}%")


if __name__ == "__main__":
    main()
