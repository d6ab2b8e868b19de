"""Training data from an InsightFace RecordIO folder: decoded images per second per CPU core and
with the DataLoader's workers, next to image folders and shards, and the cores a GPU would need.

Side by side in one process, interleaved rounds (order reversed every other round), medians:

- the same JPEG bytes read as ``rec_pairs`` (``train.rec``), as ``image_folder_pairs`` (each
  record's bytes written to ``<class>/<key>.jpg``) and as ``shard_pairs`` (the folder packed by
  ``write_shards``, i.e. ``xcos pack``); ``rec_pairs`` with ``decode="device"`` split into the
  workers' part (reading the bytes) and the batched ``decode_jpeg`` the trainer runs (here on
  the CPU; nvJPEG on a GPU). Pairs with flip, at the set's size (112x112 for the shared sets),
  random keys as the trainer draws them; a pair is 2 images.
- per core: in this process with one torch / OpenCV thread; DataLoader: ``--workers`` worker
  processes (default 2, this machine's cores) and ``--batch`` pairs per batch.
- the training step of IR-SE-50 on one core of this CPU (one thread, the config's bf16):
  ``configs/xcos_train_config.json``'s recipe (the trained IR-SE-50, the frozen IR-SE-50
  target, ArcFace) and the same without the target (``self``), the step arcface_torch times.
  The GPU rate is ``--gpu-rate`` (default: arcface_torch's IResNet-50 on A100, ``GPU_SOURCE``);
  the recipe's GPU rate is that times the FLOP ratio of the two steps (``STEP_GFLOP``: CPU
  time ratios are too noisy on a shared machine). Cores needed = rate / per-core rate.

    python bench/rec_data_path.py [--rec ../shared/data/rec/lfw40] [--rounds 5] [--items 300]
        [--batch 64] [--workers 2] [--batches 6] [--step-pairs 4] [--gpu-rate 675]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import torch
from timing import median
from torch.utils.data import DataLoader, Dataset, RandomSampler
from train_step import make_step  # the sibling bench script: bench/ is on sys.path

from xcos.config import load_config
from xcos.data.image_folder import ImageFolderPairs
from xcos.data.rec_pairs import RecPairs, collate_encoded
from xcos.data.shards import ShardPairs, ShardStore, write_shards

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "xcos_train_config.json"
#: GFLOP per image of a training step (doc/performance.md, "GPU check": torch's flop counter):
#: the recipe's 51.07 (forward 25.43 of the trained and the target IR-SE-50, backward 25.63 of
#: the trained one); without the target's forward (12.57), 38.50.
STEP_GFLOP = {"plain": 38.50, "recipe": 51.07}
GPU_SOURCE = (
    "arcface_torch, IResNet-50 + ArcFace, fp16 + TF32, batch 1024 on 8 A100-80GB: ~5,400 "
    "samples/s, i.e. 675 images/s per GPU (deepinsight/insightface, "
    "benchmarks/train/nvidia_a100.md)"
)


def image_folder_of(rec: RecPairs, root: Path) -> Path:
    """Every record's JPEG bytes as ``<class>/<key>.jpg``: the same decoding work."""
    for index in range(len(rec)):
        key = rec.key(index)
        path = root / f"{rec.labels[index]:06d}" / f"{key:09d}.jpg"  # sorted as the keys
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rec.file.payload(key))
    return root


def keys(size: int, count: int, seed: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    return [(1, int(i)) for i in rng.integers(size, size=count)]


def per_core(data: Dataset, sample: list, decode: Callable | None = None) -> Callable[[], int]:
    """Items of ``sample`` read in this process (collated and decoded in batches of 64 when
    ``decode`` is given); returns images produced."""

    def work() -> int:
        if decode is None:
            for key in sample:
                data[key]
            return 2 * len(sample)
        for start in range(0, len(sample), 64):
            batch = collate_encoded([data[key] for key in sample[start : start + 64]])
            decode(batch)
        return 2 * len(sample)

    return work


def loader_stream(data: Dataset, batch: int, workers: int, collate=None) -> Iterator[dict]:
    sampler = RandomSampler(data, replacement=True, num_samples=10**9)
    loader = DataLoader(
        data,
        batch_size=batch,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        drop_last=True,
        persistent_workers=workers > 0,
    )
    return iter(loader)


def loader_work(stream: Iterator[dict], batches: int, ready: int) -> Callable[[], tuple]:
    """Images/s over ``batches`` batches after taking the ``ready`` ones prefetched while idle."""

    def work() -> tuple[int, float]:
        for _ in range(ready):
            next(stream)
        start, images = time.perf_counter(), 0
        for _ in range(batches):
            images += 2 * len(next(stream)["label"])
        return images, time.perf_counter() - start

    return work


def rounds(works: dict[str, Callable], count: int) -> dict[str, float]:
    """Median images/s of each work over ``count`` interleaved rounds, after one warm-up."""
    rates: dict[str, list[float]] = {name: [] for name in works}
    names = list(works)
    for number in range(count + 1):
        for name in names if number % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            result = works[name]()
            images, seconds = result if isinstance(result, tuple) else (result, None)
            seconds = seconds if seconds is not None else time.perf_counter() - start
            if number:  # round 0 warms up: page cache, workers, allocator
                rates[name].append(images / seconds)
    return {name: median(values) for name, values in rates.items()}


def training_rates(pairs: int, count: int) -> dict[str, float]:
    """Images/s of the recipe's step and of the plain IR-SE-50 + ArcFace step on one core."""
    torch.set_num_threads(1)
    recipe = load_config(CONFIG, overrides=["model.target.checkpoint=null"])
    plain = load_config(CONFIG, overrides=['model.target={"type": "self"}'])
    bf16 = recipe.trainer.amp == "bf16"
    steps = {
        "xCos recipe step": make_step(recipe, pairs, bf16, recipe.trainer.channels_last),
        "IR-SE-50 + ArcFace step": make_step(plain, pairs, bf16, plain.trainer.channels_last),
    }
    times: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():
        step()  # warm-up
    for number in range(count):
        for name in list(steps) if number % 2 == 0 else list(steps)[::-1]:
            times[name].append(steps[name]())
    return {name: 2 * pairs / statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rec", default=str(REPO.parent / "shared" / "data" / "rec" / "lfw40"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--items", type=int, default=300, help="pairs per per-core round")
    parser.add_argument("--batch", type=int, default=64, help="pairs per DataLoader batch")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--batches", type=int, default=6, help="DataLoader batches per round")
    parser.add_argument("--step-pairs", type=int, default=4, help="pairs per training step")
    parser.add_argument("--step-rounds", type=int, default=3)
    parser.add_argument("--gpu-rate", type=float, default=675.0, help="IResNet-50 images/s/GPU")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="xcos-rec-bench-") as temp:
        rec = RecPairs(args.rec, flip=True)
        folder = ImageFolderPairs(
            str(image_folder_of(rec, Path(temp) / "jpeg")), image_size=rec.image_size
        )
        start = time.perf_counter()
        packed = write_shards(args.rec, Path(temp) / "rec.shards", rec.image_size, 10000, 2)
        pack_rate = len(ShardStore(packed)) / (time.perf_counter() - start)
        shards = ShardPairs(str(packed))
        device = RecPairs(args.rec, flip=True, decode="device")
        rec_bytes = rec.file.size / len(rec)
        shard_bytes = sum(entry["bytes"] for entry in ShardStore(packed).manifest["shards"])
        print(
            f"{args.rec}: {len(rec)} images of {rec.num_classes} identities, "
            f"{rec.image_size}x{rec.image_size}; the same JPEG bytes as an image folder; packed "
            f"to shards (write_shards, 2 workers) at {pack_rate:.0f} images/s; bytes per image: "
            f"train.rec {rec_bytes:.0f}, shards {shard_bytes / len(rec):.0f} "
            f"({shard_bytes / len(rec) / rec_bytes:.1f}x)"
        )
        torch.set_num_threads(1)
        cv2.setNumThreads(1)
        sample = keys(len(rec), args.items, 0)
        cpu = torch.device("cpu")
        core = rounds(
            {
                "rec_pairs (train.rec)": per_core(rec, sample),
                "image_folder_pairs (JPEG files)": per_core(folder, sample),
                "shard_pairs (decoded, xcos pack)": per_core(shards, sample),
                'rec_pairs decode="device": bytes': per_core(device, sample),
                'rec_pairs decode="device": bytes + batched decode_jpeg (CPU)': per_core(
                    device, sample, lambda batch: device.decode_batch(batch, cpu)
                ),
            },
            args.rounds,
        )
        ready = 2 * args.workers
        streams = {
            "rec_pairs (train.rec)": loader_stream(rec, args.batch, args.workers),
            "image_folder_pairs (JPEG files)": loader_stream(folder, args.batch, args.workers),
            "shard_pairs (decoded, xcos pack)": loader_stream(shards, args.batch, args.workers),
            'rec_pairs decode="device": bytes': loader_stream(
                device, args.batch, args.workers, collate_encoded
            ),
        }
        loaded = rounds(
            {name: loader_work(s, args.batches, ready) for name, s in streams.items()}, args.rounds
        )
        del streams
    steps = training_rates(args.step_pairs, args.step_rounds)
    report(args, core, loaded, steps)


def report(args, core: dict, loaded: dict, steps: dict) -> None:
    print(
        f"decoded training images/s (pairs with flip; 1 core: this process, 1 thread; "
        f"DataLoader: {args.workers} workers, {args.batch} pairs per batch); median of "
        f"{args.rounds} interleaved rounds"
    )
    print(f"{'path':<62} {'1 core':>8} {'DataLoader':>11}")
    for name, rate in core.items():
        other = f"{loaded[name]:>11.0f}" if name in loaded else f"{'':>11}"
        print(f"{name:<62} {rate:>8.0f} {other}")
    print(
        f"\ntraining step on one core (1 torch thread, bf16, {args.step_pairs} pairs, median of "
        f"{args.step_rounds}):"
    )
    for name, rate in steps.items():
        print(f"{name:<62} {rate:>8.2f} images/s")
    ratio = STEP_GFLOP["plain"] / STEP_GFLOP["recipe"]
    gpu = args.gpu_rate * ratio
    print(f"\nGPU rate assumed: {args.gpu_rate:.0f} images/s for IR-SE-50 + ArcFace ({GPU_SOURCE})")
    print(f"the xCos recipe at the FLOP ratio ({ratio:.2f}): {gpu:.0f} images/s per GPU")
    print(f"{'cores one GPU needs to feed it':<62} {'recipe':>8} {'plain':>11}")
    for name, rate in core.items():
        if "batched" in name:
            continue
        label = name + (" (+ nvJPEG on the GPU)" if "bytes" in name else "")
        print(f"{label:<62} {gpu / rate:>8.2f} {args.gpu_rate / rate:>11.2f}")


if __name__ == "__main__":
    main()
