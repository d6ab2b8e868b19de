"""``xcos prepare``: detect, align and pack a verification pair set for fast, repeatable tests.

Each distinct image is aligned once (MTCNN five points -> ArcFace template) and stored in a
memory-mapped pack (``xcos.data.pack``). Packs can be cached under a key derived from the
contents of the sources and the alignment settings, so a rerun on the same data is instant.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from xcos.cache import cache_root
from xcos.data.npy_rows import NpyRows
from xcos.data.pack import write_pack
from xcos.data.pair_sets import PairSet
from xcos.errors import DataError
from xcos.io_utils import atomic_write
from xcos.progress import progress
from xcos.runtime import freed_memory_reused, torch_threads

log = logging.getLogger(__name__)

PREPARE_VERSION = 1
#: Images per alignment chunk. Each worker thread holds one chunk's detection buffers at a
#: time; 16 rather than 32 lowers the peak memory of aligning LFW by about 0.4 GB.
ALIGN_BATCH = 16
# bump when the preparation changes, so cached packs are rebuilt


def subset_folds(pair_set: PairSet, folds: Sequence[int]) -> PairSet:
    """The pairs of the given folds only, with the images they use (re-indexed)."""
    keep = np.isin(pair_set.folds, list(folds))
    if not keep.any():
        raise DataError(f"{pair_set.name}: no pairs in folds {list(folds)}")
    return pair_set.select(keep)[0]


def source_digest(pair_set: PairSet, sources: Sequence[Path]) -> str:
    """sha256 over the source files (pair lists) and every image's bytes, in order."""
    digest = hashlib.sha256()
    for path in sources:
        digest.update(Path(path).read_bytes())
    if isinstance(pair_set.images, np.ndarray):
        digest.update(np.ascontiguousarray(pair_set.images).tobytes())
    else:
        for path in pair_set.images:
            digest.update(Path(path).read_bytes())
    digest.update(pair_set.pairs.tobytes() + pair_set.labels.tobytes() + pair_set.folds.tobytes())
    return digest.hexdigest()


def align_images(
    paths: Sequence[str | Path],
    aligner: Any,
    batch_size: int = ALIGN_BATCH,
    workers: int | None = None,
) -> np.ndarray:
    """Aligned faces uint8 [M, 3, S, S] of image files, in order (see ``aligned_chunks``)."""
    faces = None
    start = 0
    for chunk in aligned_chunks(paths, aligner, batch_size, workers):
        if faces is None:  # filled in place: no list of chunks, no second copy
            faces = np.empty((len(paths), *chunk.shape[1:]), np.uint8)
        faces[start : start + len(chunk)] = chunk
        start += len(chunk)
    return faces if faces is not None else np.zeros((0, 3, 0, 0), np.uint8)


def aligned_chunks(
    paths: Sequence[str | Path],
    aligner: Any,
    batch_size: int = ALIGN_BATCH,
    workers: int | None = None,
) -> Iterator[np.ndarray]:
    """Aligned faces uint8 [n, 3, S, S] of consecutive chunks of ``paths``, in order.

    ``workers`` threads (default: one per CPU core, at most 8) align chunks side by side, each
    with one PyTorch thread: MTCNN's small networks and its Python glue use two cores better
    as two streams than as one stream with two threads per operation. At most two chunks per
    worker are in flight, so memory does not grow with the number of images.
    """
    paths = [str(p) for p in paths]
    workers = default_workers() if workers is None else workers
    if not getattr(aligner, "thread_safe", False):
        workers = 1  # e.g. dlib's detectors: one image at a time, in one thread
    chunks = [paths[start : start + batch_size] for start in range(0, len(paths), batch_size)]

    def align(chunk: list[str]) -> np.ndarray:
        return np.stack([found.face.transpose(2, 0, 1) for found in aligner.align_batch(chunk)])

    with (
        freed_memory_reused(),  # detection buffers reused, not mapped and zeroed afresh
        progress(len(paths), "align", "img", log) as bar,
        torch_threads(1 if workers > 1 else None),
        ThreadPoolExecutor(max(workers, 1)) as pool,
    ):
        pending: deque[Future[np.ndarray]] = deque()
        for chunk in chunks:
            pending.append(pool.submit(align, chunk))
            if len(pending) >= 2 * workers:
                yield _finished(pending.popleft(), bar)
        while pending:
            yield _finished(pending.popleft(), bar)


def _finished(future: Future[np.ndarray], bar: Any) -> np.ndarray:
    faces = future.result()
    bar.update(len(faces))
    return faces


def default_workers() -> int:
    """Alignment threads: one per CPU core this process may use, at most 8."""
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1))


def prepare_pack(
    pair_set: PairSet,
    out: str | Path,
    aligner: Any | None,
    sources: Sequence[Path] = (),
    batch_size: int = ALIGN_BATCH,
    overwrite: bool = False,
    workers: int | None = None,
) -> Path:
    """Align (when the set holds paths) and write ``pair_set`` as the pack ``out``.

    Aligned faces stream into a scratch ``.npy`` beside ``out`` as they come and are copied
    into the pack from there: alignment's peak memory does not hold every face as well.
    """
    with contextlib.ExitStack() as stack:
        if isinstance(pair_set.images, np.ndarray):
            faces = pair_set.images
            alignment: dict[str, Any] = {"method": "already aligned (source provides faces)"}
            ids = [f"{pair_set.name}:{i}" for i in range(len(faces))]
        else:
            if aligner is None:
                raise ValueError("prepare: images given as files need a face aligner")
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            scratch = stack.enter_context(
                tempfile.TemporaryDirectory(prefix=".aligning-", dir=Path(out).parent)
            )
            faces = streamed_faces(
                Path(scratch) / "faces.npy", pair_set.images, aligner, batch_size, workers
            )
            stats = aligner.stats
            alignment = {
                "settings": aligner_settings(aligner),
                "stats": stats.as_dict() if hasattr(stats, "as_dict") else dict(stats),
            }
            ids = [_relative_id(p) for p in pair_set.images]
        source = {
            "files": [str(p) for p in sources],
            "sha256": source_digest(pair_set, sources),
            "prepare_version": PREPARE_VERSION,
        }
        return write_pack(
            out,
            faces,
            pair_set.pairs,
            pair_set.labels,
            pair_set.folds,
            ids,
            source,
            alignment,
            extra=pair_set.extra or None,
            overwrite=overwrite,
        )


def streamed_faces(
    target: Path,
    paths: Sequence[str | Path],
    aligner: Any,
    batch_size: int = ALIGN_BATCH,
    workers: int | None = None,
) -> np.ndarray:
    """Aligned faces of ``paths`` written to the ``.npy`` file ``target`` chunk by chunk,
    returned memory-mapped (an empty [0, 3, 0, 0] array when there are no paths)."""
    with target.open("wb") as stream:
        chunks = aligned_chunks(paths, aligner, batch_size, workers)
        if not write_face_chunks(stream, chunks, len(paths)):
            return np.zeros((0, 3, 0, 0), np.uint8)
    return np.load(target, mmap_mode="r", allow_pickle=False)


def write_face_chunks(stream: BinaryIO, chunks: Iterator[np.ndarray], count: int) -> bool:
    """Write ``count`` faces arriving in chunks [n, 3, S, S] to ``stream`` as one ``.npy``
    array, each chunk as it comes (never all in memory at once). False when no chunk came."""
    wrote = False
    for chunk in chunks:
        if not wrote:
            header = {"descr": "|u1", "fortran_order": False, "shape": (count, *chunk.shape[1:])}
            np.lib.format.write_array_header_1_0(stream, header)
            wrote = True
        stream.write(np.ascontiguousarray(chunk, dtype=np.uint8).tobytes())
    return wrote


def aligner_settings(aligner: Any) -> dict[str, Any]:
    settings = getattr(aligner, "settings", None)
    return dict(settings() if callable(settings) else settings or {})


def _relative_id(path: str) -> str:
    # "<identity folder>/<file>": enough to find the source again, without machine paths.
    parts = Path(path).parts
    return "/".join(parts[-2:]) if len(parts) >= 2 else str(path)


def cached_pack(
    pair_set: PairSet,
    aligner: Any,
    sources: Sequence[Path] = (),
    cache_dir: str | Path | None = None,
    batch_size: int = ALIGN_BATCH,
) -> Path:
    """The folder of a pack of ``pair_set`` in the cache, made first when absent.

    The cache key hashes the source files, every image, the pairs and the alignment
    settings, so any change to the data or to the preparation makes a new pack.
    """
    cache = cache_root(cache_dir)
    key = hashlib.sha256(
        (
            source_digest(pair_set, sources)
            + json.dumps(aligner_settings(aligner), sort_keys=True)
            + str(PREPARE_VERSION)
        ).encode()
    ).hexdigest()[:24]
    folder = cache / "packs" / f"{pair_set.name}-{key}.pack"
    if not (folder / "manifest.json").is_file():
        log.info("preparing %s into the cache %s", pair_set.name, folder)
        prepare_pack(pair_set, folder, aligner, sources, batch_size, overwrite=True)
    return folder


def cached_faces(
    paths: Sequence[str | Path],
    aligner: Any,
    cache_dir: str | Path | None = None,
    batch_size: int = ALIGN_BATCH,
) -> tuple[NpyRows, str]:
    """Aligned faces uint8 [M, 3, S, S] of image files (rows read from the cache file on
    demand, never all in memory: ``NpyRows``) and the cache key; the key hashes every image's
    bytes and the alignment settings."""
    cache = cache_root(cache_dir)
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).read_bytes())
    digest.update(json.dumps(aligner_settings(aligner), sort_keys=True).encode())
    digest.update(str(PREPARE_VERSION).encode())
    key = digest.hexdigest()[:24]
    target = cache / "faces" / f"{key}.npy"
    if not target.is_file():
        log.info("aligning %d images into the cache %s", len(paths), target)
        with atomic_write(target) as stream:  # a crash never leaves a half-written entry
            write_face_chunks(stream, aligned_chunks(paths, aligner, batch_size), len(paths))
    return NpyRows(target), key
