"""Evaluation throughput on LFW: the original's way and ours, side by side in one run.

The original forwarded both images of every pair (LFW View 2: 12,000 forwards for 6,000
pairs), in float32, NCHW. Ours embeds each distinct image once (7,701 images), channels-last:
eagerly in float32; compiled with frozen weights (``xcos.evaluation.compiled``) in float32; and
under ``--amp`` autocast (bfloat16: oneDNN's bf16 kernels on CPUs that have them), eagerly and
compiled. Our ways' batch sizes are chosen by measurement first (``--search``, on
``--search-sample`` images; the compiled forward's search is also its compile; the compiled
bf16 way uses the fp32 search's batch size and is compiled on the same sample; both compile
times are printed and counted into second ratios). Then all ways run in one process on the
same aligned pack and model, round after round, and the script prints pairs/s of each, the
ratio to the original's way, and each way's 10-fold accuracy, so that a faster way that loses
accuracy shows it; per pair, how many same/different decisions each way changes at the
thresholds the protocol chose on the original's scores; and the arithmetic rate (GFLOP/s) of
the fp32 ways, which says how close to the machine's limit they run.

    python bench/evaluate_lfw.py [--lfw ../shared/data/lfw] [--model dlib | --config FILE]
        [--batch 64] [--search 16 32 64 128] [--search-sample 512] [--rounds 1]
        [--folds 0 1 ...] [--align-sample 200]

``--model dlib`` (the default) is the built-in model (dlib's ResNet with xcos's head) on
dlib's 150 px chips; ``--config`` builds a config's model with random weights instead (its
accuracy then means nothing; its speed does). The aligned pack is cached (``$XCOS_CACHE``,
default ``~/.cache/xcos``), so only the first run pays for the alignment of every image.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from xcos.config import load_config
from xcos.data.align import FaceAligner
from xcos.data.images import read_rgb
from xcos.data.lfw import read_lfw
from xcos.data.pack import read_pack
from xcos.data.pair_sets import LFW_ALIGNMENT, PairSet
from xcos.data.prepare import cached_pack, subset_folds
from xcos.evaluation.compiled import embedding_forward
from xcos.evaluation.evaluator import evaluate_pair_set
from xcos.evaluation.verification import kfold_accuracy
from xcos.explain.verifier import Verifier
from xcos.models.xcos_model import build_model
from xcos.runtime import autocast_factory

#: dlib's 150 px face chips, for the built-in dlib model
DLIB_CHIPS = {"template": "dlib", "image_size": 150}


@torch.no_grad()
def original_way(model, pack: PairSet, batch_size: int) -> dict[str, np.ndarray]:
    """Forward both faces of every pair, batch by batch, in float32, as the original did."""
    scores: dict[str, list[np.ndarray]] = {}
    faces = pack.images
    for start in range(0, len(pack), batch_size):
        pairs = pack.pairs[start : start + batch_size]
        a = torch.from_numpy(np.asarray(faces[pairs[:, 0]])).float().div_(127.5).sub_(1)
        b = torch.from_numpy(np.asarray(faces[pairs[:, 1]])).float().div_(127.5).sub_(1)
        for key, value in model.compare(model.embed(a), model.embed(b)).items():
            if key in ("xcos", "cos"):
                scores.setdefault(key, []).append(value.float().numpy())
    return {key: np.concatenate(value) for key, value in scores.items()}


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


def load_model(name: str | None, config_path: str | None):
    if config_path:
        torch.manual_seed(0)
        return build_model(load_config(config_path).model, num_classes=10).eval()
    return Verifier.pretrained(name, device="cpu").model.eval()


def accuracy(scores: np.ndarray, pack: PairSet) -> float:
    """k-fold accuracy in %; NaN with a single fold (no other fold to set the threshold)."""
    if len(np.unique(pack.folds)) < 2:
        return float("nan")
    return 100 * kfold_accuracy(scores, pack.labels, pack.folds).accuracy


def decisions_at(reference: np.ndarray, pack: PairSet):
    """A function of scores -> same/different decisions at the thresholds that the k-fold
    protocol chose on ``reference`` (each pair by its fold's): a per-pair view of how far
    another way's scores are from the reference's, which the re-chosen thresholds of the
    k-fold accuracy hide or exaggerate."""
    thresholds = np.asarray(kfold_accuracy(reference, pack.labels, pack.folds).fold_thresholds)
    per_pair = thresholds[np.searchsorted(np.unique(pack.folds), pack.folds)]
    return lambda scores: np.asarray(scores) > per_pair


def gflop_per_image(model) -> float:
    """Floating-point operations of one embedding (PyTorch's flop counter), in GFLOP."""
    size = model.input_size
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.embed(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def embedding_rate(embed, faces: np.ndarray, batch_size: int) -> float:
    """Images/s of ``embed`` over ``faces`` (uint8 [N, 3, S, S]), fed as the evaluator feeds
    it: normalised, channels-last, ``batch_size`` at a time."""
    start = time.perf_counter()
    with torch.no_grad():
        for first in range(0, len(faces), batch_size):
            chunk = torch.from_numpy(np.array(faces[first : first + batch_size]))
            chunk = chunk.float().div_(127.5).sub_(1.0)
            embed(chunk.contiguous(memory_format=torch.channels_last))
    return len(faces) / (time.perf_counter() - start)


def search_batch_size(model, faces: np.ndarray, batches, compiled: bool) -> tuple[int, float]:
    """The batch size of the highest embedding rate on ``faces``, each candidate warmed up
    first (for the compiled forward that is its compile); prints each candidate's rate.
    Returns (batch size, seconds of that batch size's first call)."""
    rates, first_call = {}, {}
    for batch_size in batches:
        embed = embedding_forward(model, compiled, batch_size)
        _, first_call[batch_size] = timed(embedding_rate, embed, faces[:batch_size], batch_size)
        rates[batch_size] = embedding_rate(embed, faces, batch_size)
    best = max(rates, key=rates.get)
    table = "  ".join(f"{b}: {r:.1f}" for b, r in rates.items())
    name = "compiled" if compiled else "eager   "
    print(f"batch search, {name} fp32 images/s  {table}  -> {best}", flush=True)
    return best, first_call[best]


def evaluate(pack_dir: str, args: argparse.Namespace) -> None:
    """Every way on a prepared pack; run in its own process so its peak RSS is its own."""
    pack = read_pack(pack_dir, "lfw")
    model = load_model(args.model, args.config)
    cpu = torch.device("cpu")
    sample = pack.images[: args.search_sample]
    eager_batch, _ = search_batch_size(model, sample, args.search, compiled=False)
    compiled_batch, compile_seconds = search_batch_size(model, sample, args.search, compiled=True)
    amp = autocast_factory(args.amp, cpu)
    with amp():  # compiled under autocast: a graph of its own, compiled here, not timed below
        embed = embedding_forward(model, True, compiled_batch)
        _, amp_compile_seconds = timed(embedding_rate, embed, sample, compiled_batch)
    ways = {
        f"original (both per pair, fp32, {args.batch})": lambda: original_way(
            model, pack, args.batch
        ),
        f"ours (each once, fp32, {eager_batch})": lambda: (
            evaluate_pair_set(model, pack, cpu, batch_size=eager_batch).scores
        ),
        f"ours (compiled, fp32, {compiled_batch})": lambda: (
            evaluate_pair_set(model, pack, cpu, batch_size=compiled_batch, compiled=True).scores
        ),
        f"ours (each once, {args.amp}, {eager_batch})": lambda: (
            evaluate_pair_set(model, pack, cpu, batch_size=eager_batch, autocast=amp).scores
        ),
        # the fp32 search's batch size: a bf16 search would cost four more compiles
        f"ours (compiled, {args.amp}, {compiled_batch})": lambda: (
            evaluate_pair_set(
                model, pack, cpu, batch_size=compiled_batch, autocast=amp, compiled=True
            ).scores
        ),
    }
    seconds = {name: [] for name in ways}
    scores = {}
    for round_ in range(args.rounds):  # in turn, reversed every other round
        for name in ways if round_ % 2 == 0 else list(ways)[::-1]:
            scores[name], took = timed(ways[name])
            seconds[name].append(took)
    folds = len(set(pack.folds.tolist()))
    print(f"LFW {len(pack)} pairs, {len(pack.images)} distinct images, {folds} folds")
    model_name = args.config or f"built-in {args.model}"
    print(f"model: {model_name}; {args.rounds} round(s), median; way (how, precision, batch)")
    base = statistics.median(seconds[next(iter(ways))])
    for name in ways:
        took = statistics.median(seconds[name])
        score_text = "  ".join(
            f"{key} {accuracy(scores[name][key], pack):.2f}%"
            for key in ("xcos", "cos")
            if key in scores[name]
        )
        print(
            f"{name:<36}{len(pack) / took:8.1f} pairs/s {base / took:6.2f}x  ({took:.1f} s)  "
            + score_text
        )
    for name, took in ((list(ways)[2], compile_seconds), (list(ways)[4], amp_compile_seconds)):
        counted = statistics.median(seconds[name]) + took
        print(
            f"{name}, with its compile ({took:.1f} s) counted: "
            f"{len(pack) / counted:.1f} pairs/s {base / counted:.2f}x"
        )
    reference = scores[next(iter(ways))]["xcos"]
    decide = decisions_at(reference, pack)
    for name in list(ways)[1:]:
        gap = np.abs(scores[name]["xcos"] - reference).max()
        changed = int((decide(scores[name]["xcos"]) != decide(reference)).sum())
        print(
            f"{name}: largest xCos difference to the original's way {gap:.2e}, "
            f"same/different decisions changed at its fold thresholds: {changed} of {len(pack)}"
        )
    gflop = gflop_per_image(model)
    for name in list(ways)[1:3]:
        rate = len(pack.images) / statistics.median(seconds[name])
        print(f"{name}: {gflop:.3f} GFLOP per image, {gflop * rate:.0f} GFLOP/s on the whole set")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lfw", default=str(Path(__file__).parents[1].parent / "shared/data/lfw"))
    parser.add_argument("--model", default="dlib", help="a built-in model (default dlib)")
    parser.add_argument("--config", help="a config's model, random weights, instead")
    parser.add_argument(
        "--batch", type=int, default=64, help="images per forward pass, the original's way"
    )
    parser.add_argument(
        "--search",
        type=int,
        nargs="+",
        default=[16, 32, 64, 128],
        help="batch sizes to measure for our ways (the fastest is used)",
    )
    parser.add_argument("--search-sample", type=int, default=512, help="images per search run")
    parser.add_argument("--amp", default="bf16", choices=["bf16", "fp16"])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--align-sample", type=int, default=200)
    parser.add_argument("--folds", type=int, nargs="+", help="only these folds (default: all)")
    parser.add_argument("--evaluate", help=argparse.SUPPRESS)  # internal: a prepared pack
    args = parser.parse_args()
    if args.evaluate:
        evaluate(args.evaluate, args)
        return
    lfw = Path(args.lfw)
    pair_set = read_lfw(str(lfw / "pairs.txt"), str(lfw / "images"))
    if args.folds:
        pair_set = subset_folds(pair_set, args.folds)
    # as test mode aligns LFW, so the cache is shared; dlib's chips for dlib's model
    settings = LFW_ALIGNMENT if args.config else LFW_ALIGNMENT | DLIB_CHIPS
    aligner = FaceAligner(**settings)
    decode_rate, align_rate = alignment_rates(pair_set, aligner, args.align_sample)
    print(f"decode only:                 {decode_rate:8.1f} images/s")
    print(f"decode + detect + align:     {align_rate:8.1f} images/s", flush=True)
    folder = cached_pack(pair_set, aligner, [lfw / "pairs.txt"])
    command = [sys.executable, __file__, "--evaluate", str(folder), "--batch", str(args.batch)]
    command += ["--amp", args.amp, "--rounds", str(args.rounds), "--model", args.model]
    command += ["--search", *map(str, args.search), "--search-sample", str(args.search_sample)]
    command += ["--config", args.config] if args.config else []
    subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
