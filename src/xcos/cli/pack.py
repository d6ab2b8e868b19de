"""``xcos pack``: decode an identity image folder or a RecordIO folder once into memory-mappable
training shards."""

from __future__ import annotations

import argparse
import logging
import time

from xcos.cli.common import Command

DESCRIPTION = (
    "Decode an identity image folder, or an InsightFace RecordIO folder (train.rec, train.idx, "
    "property), once into memory-mappable training shards (read by data.train type "
    "shard_pairs)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--images",
        required=True,
        help="folder with one sub-folder per identity, or a RecordIO folder (train.rec)",
    )
    parser.add_argument("--out", required=True, help="the shards folder to write (<name>.shards)")
    parser.add_argument("--size", type=int, default=112, help="side of the stored faces")
    parser.add_argument("--shard-size", type=int, default=10000, help="most images per shard")
    parser.add_argument("--workers", type=int, help="decoding processes (default: CPUs, max 8)")
    parser.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="drop undecodable images (counted in the manifest) instead of stopping",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing shards")


def run(args: argparse.Namespace) -> int:
    """Write the shards and print one summary line; errors are ``DataError`` (exit 2)."""
    from xcos.data.shards import ShardStore, write_shards

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    out = write_shards(
        args.images,
        args.out,
        image_size=args.size,
        shard_size=args.shard_size,
        num_workers=args.workers,
        skip_bad_images=args.skip_bad_images,
        overwrite=args.overwrite,
    )
    seconds = time.perf_counter() - start
    store = ShardStore(out)  # reads back what was written: headers, sizes, labels
    images, manifest = len(store), store.manifest
    size = sum(shard["bytes"] for shard in manifest["shards"])
    skipped = manifest["skipped_images"]
    print(
        f"{out}: {images} images, {len(store.identity_names)} identities, "
        f"{len(manifest['shards'])} shards, {size} bytes ({size / 2**30:.2f} GiB), "
        f"{seconds:.1f} s, {images / seconds:.0f} images/s"
        + (f", {skipped} unreadable image(s) skipped" if skipped else "")
    )
    return 0


COMMAND = Command(
    "pack", "pack an image or RecordIO folder into training shards", DESCRIPTION, add_arguments, run
)
