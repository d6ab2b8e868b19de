"""Training data path: pairs from a JPEG image folder vs from packed shards, vs the model's needs.

Measures, side by side in one process and interleaved round by round, the steady throughput
(images/s; a pair is 2 images) of two DataLoaders with the config's batch size and
``data.num_workers``: ``image_folder_pairs`` decoding JPEGs, and ``shard_pairs`` reading shards
of the same folder written by ``write_shards`` (``xcos pack``). Next to them, the CPU speed of
one forward+backward+update step of the config's model with its amp / channels-last settings
(``bench/train_step.py``), so "loader / training" > 1 means the loader keeps up with the model.

Without ``--images``, SynthFaces identities are drawn at 112x112, saved as JPEG (quality 95)
into an identity folder under a temporary directory, and packed.

    python bench/data_path.py [--images FOLDER] [--config configs/demo_synthetic.json]
        [--workers N] [--identities 100] [--batches 20] [--rounds 5] [--train-steps 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, RandomSampler
from train_step import make_step  # the sibling bench script: bench/ is on sys.path

from xcos.config import Config, load_config
from xcos.data.generators import synthfaces
from xcos.data.image_folder import ImageFolderPairs
from xcos.data.shards import ShardPairs, ShardStore, write_shards

SIZE = 112


def jpeg_identity_folder(root: Path, identities: int) -> Path:
    """SynthFaces ``train`` identities re-saved as JPEG (quality 95); returns the folder."""
    synth = root / "synthfaces"
    synthfaces(
        str(synth),
        identities={"train": identities},
        pairs_per_split=20,
        one_region_pairs=0,
        image_size=SIZE,
    )
    folder = root / "jpeg"
    for png in sorted((synth / "train").glob("*/*.png")):
        target = folder / png.parent.name / f"{png.stem}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(png) as image:
            image.convert("RGB").save(target, quality=95)
    return folder


def endless_batches(dataset: Dataset, batch: int, workers: int) -> Iterator[dict]:
    """Batches of random keys as the trainer draws them, for as long as the bench wants."""
    sampler = RandomSampler(dataset, replacement=True, num_samples=10**9)
    loader = DataLoader(
        dataset, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=True
    )
    return iter(loader)


def loader_round(batches: Iterator[dict], count: int, ready: int) -> float:
    """Images/s over ``count`` batches, after taking the ``ready`` batches the workers
    prefetched while idle (they would flatter the loader)."""
    for _ in range(ready):
        next(batches)
    start = time.perf_counter()
    images = 0
    for _ in range(count):
        batch = next(batches)
        images += 2 * len(batch["label"])
    return images / (time.perf_counter() - start)


def training_round(step: Callable[[], float], steps: int, batch: int) -> float:
    """Images/s of the median of ``steps`` training steps."""
    return 2 * batch / statistics.median(step() for _ in range(steps))


def measure(args: argparse.Namespace, config: Config, folder: Path, shards: Path) -> dict:
    batch = config.data.batch_size
    workers = config.data.num_workers if args.workers is None else args.workers
    loaders = {
        "image_folder_pairs (JPEG)": ImageFolderPairs(str(folder), image_size=SIZE),
        "shard_pairs": ShardPairs(str(shards)),
    }
    streams = {name: endless_batches(data, batch, workers) for name, data in loaders.items()}
    ready = 2 * workers  # DataLoader's default prefetch_factor is 2 batches per worker
    step = make_step(config, batch, config.trainer.amp == "bf16", config.trainer.channels_last)
    step()  # warm-up: allocator, autocast caches
    for stream in streams.values():
        loader_round(stream, 2, 0)  # warm-up: start the workers, fill the page cache
    rates: dict[str, list[float]] = {name: [] for name in [*streams, "training step"]}
    names = list(rates)
    for round_number in range(args.rounds):
        # reversed order in odd rounds: no path always runs first or after the same one
        for name in names if round_number % 2 == 0 else names[::-1]:
            if name == "training step":
                rates[name].append(training_round(step, args.train_steps, batch))
            else:
                rates[name].append(loader_round(streams[name], args.batches, ready))
    return {name: statistics.median(values) for name, values in rates.items()}


def report(config: Config, args: argparse.Namespace, rates: dict, setup: str) -> None:
    workers = config.data.num_workers if args.workers is None else args.workers
    train = rates["training step"]
    jpeg = rates["image_folder_pairs (JPEG)"]
    print(setup)
    print(
        f"batch {config.data.batch_size} pairs, {workers} loader worker(s), "
        f"{torch.get_num_threads()} torch threads, amp {config.trainer.amp}, channels_last "
        f"{config.trainer.channels_last}; median of {args.rounds} interleaved rounds"
    )
    print(f"{'path':<28} {'images/s':>9} {'vs JPEG':>8} {'vs training':>12}")
    for name, rate in rates.items():
        versus_jpeg = f"{rate / jpeg:.2f}x" if name != "training step" else ""
        print(f"{name:<28} {rate:>9.0f} {versus_jpeg:>8} {rate / train:>11.2f}x")
    print("vs training > 1: the loader produces images faster than the model consumes them")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", help="identity folder of JPEGs (default: SynthFaces)")
    parser.add_argument("--config", default="configs/demo_synthetic.json")
    parser.add_argument("--workers", type=int, help="loader workers (default: data.num_workers)")
    parser.add_argument("--identities", type=int, default=100, help="SynthFaces identities")
    parser.add_argument("--batches", type=int, default=20, help="batches per loader per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--train-steps", type=int, default=2, help="training steps per round")
    args = parser.parse_args()
    config = load_config(args.config)
    with tempfile.TemporaryDirectory(prefix="xcos-data-path-") as temp:
        folder = (
            Path(args.images) if args.images else jpeg_identity_folder(Path(temp), args.identities)
        )
        start = time.perf_counter()
        shards = write_shards(folder, Path(temp) / "bench.shards", SIZE)
        seconds = time.perf_counter() - start
        count = len(ShardStore(shards))
        setup = (
            f"{folder}: {count} images; packed to {SIZE}x{SIZE} shards in {seconds:.1f} s "
            f"({count / seconds:.0f} images/s)"
        )
        report(config, args, measure(args, config, folder, shards), setup)


if __name__ == "__main__":
    main()
