"""Shards: a packed training format for large identity folders (MS1M-sized), read memory-mapped.

Decoding millions of small JPEGs costs more CPU per step than a small model's update; shards
store every face already decoded, so a training item is a memory copy. A shards folder
``<name>.shards/`` holds

- ``shard-00000.npy``, ``shard-00001.npy``, ...: uint8 [n, 3, S, S] RGB faces (channels first),
  at most ``shard_size`` each, images stored identity by identity, identities sorted by name;
- ``labels.npy``: int64 [N], the identity index of each image (non-decreasing);
- ``manifest.json``: format name and version, image size, image count, identity names, each
  shard's file name, image count and byte size, the source folder, the creation settings and
  the skipped (undecodable) images.

Plain ``.npy`` (never pickle) lets each shard be memory-mapped: RAM holds only the pages that
training touches, and the OS page cache is shared by all DataLoader workers.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from xcos.data.image_folder import IdentityPairs, scan_image_folder
from xcos.data.images import read_face
from xcos.data.recordio import RecordFile, is_record_folder
from xcos.errors import BadImageError, DataError, UnalignedImageError
from xcos.io_utils import atomic_folder, fsync_file, read_manifest
from xcos.registry import DATASETS

log = logging.getLogger(__name__)

SHARDS_FORMAT = "xcos-shards"
SHARDS_VERSION = 1
SHARDS_SUFFIX = ".shards"
MANIFEST = "manifest.json"
LABELS = "labels.npy"
DECODE_BATCH = 64  # images per worker message: large enough to amortise IPC, small in RAM
PROGRESS_FROM = 5000  # show a progress bar from this many images on
LISTED_SKIPS = 1000  # skipped files named in the manifest (the count is always exact)


# --- writing -------------------------------------------------------------------------------


def write_shards(
    images_root: str | Path,
    out: str | Path,
    image_size: int = 112,
    shard_size: int = 10000,
    num_workers: int | None = None,
    skip_bad_images: bool = False,
    overwrite: bool = False,
) -> Path:
    """Decode an identity image folder, or an InsightFace RecordIO folder (``train.rec``,
    ``train.idx``, ``property``), into a shards folder atomically; returns ``out``.

    Args:
        images_root: folder with one sub-folder of images per identity, or a RecordIO folder
            (its images stored class by class, as ``rec_pairs`` numbers them; identity names
            are the class numbers).
        out: the shards folder to write; its name must end in ``.shards``.
        image_size: side S of the stored faces; images of another size are resized.
        shard_size: most images per shard file.
        num_workers: decoding processes (default: the CPU count, at most 8; 0 decodes here).
        skip_bad_images: drop (and count in the manifest) images that cannot be decoded;
            otherwise the first one stops the write with an error naming the file.
        overwrite: replace an existing ``out``.

    Images are decoded in parallel, in order, and streamed shard by shard into a hidden
    temporary sibling folder that is renamed into place at the end, so a crash or error never
    leaves a half-written shards folder.

    Raises:
        DataError: a missing or malformed folder, a bad image (without ``skip_bad_images``),
            bad arguments, or an existing ``out`` without ``overwrite``.
    """
    root, target = Path(images_root), Path(out)
    _check_write_arguments(root, target, image_size, shard_size, overwrite)
    names, decoder, identities, items = _source(root, image_size)
    workers = min(8, os.cpu_count() or 1) if num_workers is None else num_workers
    log.info(
        "packing %d images of %d identities from %s into %s (%d decoding workers)",
        len(items),
        len(names),
        root,
        target,
        workers,
    )
    with atomic_folder(target) as temp:
        writer = _ShardWriter(temp, image_size, shard_size, len(items))
        skipped = _decode_into(writer, decoder, items, identities, workers, skip_bad_images)
        shards = writer.finish()
        kept_names = _write_labels(temp / LABELS, root, names, writer.identities)
        settings = {
            "image_size": image_size,
            "shard_size": shard_size,
            "skip_bad_images": skip_bad_images,
        }
        _write_json(temp / MANIFEST, _manifest(root, kept_names, shards, settings, skipped))
    return target


def _check_write_arguments(
    root: Path, target: Path, image_size: int, shard_size: int, overwrite: bool
) -> None:
    where = f"write_shards({str(target)!r})"
    if target.suffix != SHARDS_SUFFIX:
        raise DataError(f"{where}: a shards folder name must end in {SHARDS_SUFFIX!r}")
    if image_size < 1 or shard_size < 1:
        raise DataError(f"{where}: image_size and shard_size must be >= 1")
    if not root.is_dir():
        raise DataError(
            f"images folder {str(root)!r} does not exist; pass an image folder with one "
            "sub-folder of aligned face images per identity, or an InsightFace RecordIO folder"
        )
    if target.exists() and not overwrite:
        raise DataError(f"{where}: already exists; delete it or pass overwrite=True (--overwrite)")
    if target.exists() and not (target / MANIFEST).is_file():
        raise DataError(f"{where}: exists and is not a shards folder; refusing to replace it")


def _source(root: Path, size: int) -> tuple[list[str], Dataset, np.ndarray, list[str]]:
    """(identity names, decoder of image i, identity of image i, name of image i) of an
    identity image folder or a RecordIO folder."""
    if is_record_folder(root):
        file = RecordFile(root)
        keys = file.keys_by_class()
        names = [str(number) for number in range(file.num_classes)]
        labels = np.sort(file.labels)
        return names, _RecordDecoder(file, keys, size), labels, _RecordNames(keys)
    names, per_identity = scan_image_folder(root)
    paths = [path for files in per_identity for path in files]
    identities = np.repeat(np.arange(len(names)), [len(files) for files in per_identity])
    return names, _Decoder(paths, size), identities, [str(p.relative_to(root)) for p in paths]


class _Decoder(Dataset):
    """Decodes image i to CHW uint8; a failure comes back as a message, not an exception,
    so the main process can name the file (worker exceptions arrive wrapped in tracebacks).
    Faces are aligned crops of the pack's size: one of another size is refused, never
    resized (``unaligned`` in the reply)."""

    def __init__(self, paths: Sequence[Path], size: int) -> None:
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[np.ndarray | None, str | None, bool]:
        """(face, None, False), or (None, message, unaligned)."""
        fix = f"pack a folder of aligned {self.size}x{self.size} faces (see `xcos prepare`)"
        try:
            return read_face(self.paths[index], self.size, fix).transpose(2, 0, 1), None, False
        except UnalignedImageError as err:
            return None, str(err), True
        except BadImageError as err:
            return None, str(err), False


class _RecordNames(Sequence):
    """``train.rec key K`` of image i, made on demand (MS1MV2 has 5.8M images)."""

    def __init__(self, keys: np.ndarray) -> None:
        self.keys = keys

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> str:
        return f"train.rec key {self.keys[index]}"


class _RecordDecoder(Dataset):
    """``_Decoder`` for the records ``keys`` of a RecordIO folder (images numbered class by
    class); failures name the file, the key and the byte offset."""

    def __init__(self, file: RecordFile, keys: np.ndarray, size: int) -> None:
        self.file, self.keys, self.size = file, keys, size

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> tuple[np.ndarray | None, str | None, bool]:
        key = int(self.keys[index])
        try:
            face = self.file.image(key)
        except (DataError, BadImageError) as err:  # a corrupt record, an undecodable image
            return None, str(err), False
        if face.shape[:2] != (self.size, self.size):
            height, width = face.shape[:2]
            return (
                None,
                (
                    f"{self.file.where(key)}: a {width}x{height} face, the pack's --size is "
                    f"{self.size}; faces are never resized: pack with the faces' size"
                ),
                True,
            )
        return face.transpose(2, 0, 1), None, False


def _as_list(batch: list) -> list:
    """Collate function that keeps the numpy arrays as they are (module level: picklable)."""
    return batch


def _decode_into(
    writer: _ShardWriter,
    decoder: Dataset,
    items: Sequence[str],
    identities: np.ndarray,
    workers: int,
    skip_bad_images: bool,
) -> list[str]:
    """Feed every decodable image to ``writer`` in order; returns the names of the skipped
    ones (``items``: each image's name relative to the source folder)."""
    loader = DataLoader(decoder, batch_size=DECODE_BATCH, num_workers=workers, collate_fn=_as_list)
    skipped: list[str] = []
    quiet = True if len(items) < PROGRESS_FROM else None  # None: a bar on a terminal only
    bar = tqdm(total=len(items), unit="img", desc="pack", disable=quiet, smoothing=0)
    with bar:
        for number, batch in enumerate(loader):
            for offset, (face, error, unaligned) in enumerate(batch):
                index = number * DECODE_BATCH + offset
                if unaligned:  # not a bad file: a folder of the wrong faces, never skipped
                    raise UnalignedImageError(error)
                if face is None:
                    if not skip_bad_images:
                        raise DataError(f"{error}; fix or delete it, or pass --skip-bad-images")
                    skipped.append(items[index])
                    writer.skip()
                    continue
                writer.add(face, int(identities[index]))
            bar.update(len(batch))
    if skipped:
        log.warning("skipped %d unreadable image(s), first: %s", len(skipped), skipped[0])
    return skipped


class _ShardWriter:
    """Streams CHW faces into shard files of ``shard_size`` images through memory maps.

    Each shard is sized for the images still to come; only the last one can end short (when
    bad images were skipped), and it is then rewritten at its true length.
    """

    def __init__(self, folder: Path, size: int, shard_size: int, candidates: int) -> None:
        self.folder, self.size, self.shard_size = folder, size, shard_size
        self.remaining = candidates  # images not yet offered: an upper bound on those to come
        self.identities = np.empty(candidates, dtype=np.int64)  # of each image written
        self.count = 0
        self.shards: list[dict[str, Any]] = []
        self.current: np.ndarray | None = None
        self.filled = 0

    def add(self, face: np.ndarray, identity: int) -> None:
        if self.current is None:
            count = min(self.shard_size, self.remaining)
            shape = (count, 3, self.size, self.size)
            self.current = np.lib.format.open_memmap(self._path(), "w+", np.uint8, shape)
            self.filled = 0
        self.current[self.filled] = face
        self.identities[self.count] = identity
        self.filled += 1
        self.count += 1
        self.remaining -= 1
        if self.filled == len(self.current):
            self._close()

    def skip(self) -> None:
        self.remaining -= 1

    def finish(self) -> list[dict[str, Any]]:
        """Close the last shard; returns the manifest entries of all shards."""
        if self.current is not None:
            self._close()
        self.identities = self.identities[: self.count]
        return self.shards

    def _path(self) -> Path:
        return self.folder / f"shard-{len(self.shards):05d}.npy"

    def _close(self) -> None:
        path, mapped = self._path(), self.current
        mapped.flush()
        short = np.array(mapped[: self.filled]) if self.filled < len(mapped) else None
        self.current = mapped = None  # unmaps the file
        if short is not None:
            np.save(path, short, allow_pickle=False)
        fsync_file(path)
        entry = {"file": path.name, "images": self.filled, "bytes": path.stat().st_size}
        self.shards.append(entry)


def _write_labels(path: Path, root: Path, names: list[str], identities: np.ndarray) -> list[str]:
    """Save each image's index among the identities that kept images; returns their names."""
    kept, labels = np.unique(identities, return_inverse=True)
    if len(kept) < 2:
        raise DataError(f"{root}: fewer than 2 identities have readable images")
    np.save(path, labels.astype(np.int64), allow_pickle=False)
    fsync_file(path)
    return [names[i] for i in kept]


def _write_json(path: Path, content: dict[str, Any]) -> None:
    path.write_text(json.dumps(content, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    fsync_file(path)


def _manifest(
    root: Path,
    names: list[str],
    shards: list[dict[str, Any]],
    settings: dict[str, Any],
    skipped: list[str],
) -> dict[str, Any]:
    return {
        "format": SHARDS_FORMAT,
        "version": SHARDS_VERSION,
        "layout": "uint8 [n, 3, S, S] RGB per shard; images identity by identity",
        "image_size": settings["image_size"],
        "images": sum(shard["images"] for shard in shards),
        "identities": len(names),
        "identity_names": names,
        "shards": shards,
        "source": str(root.resolve()),
        "settings": settings,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "skipped_images": len(skipped),
        "skipped_files": skipped[:LISTED_SKIPS],
    }


# --- reading -------------------------------------------------------------------------------


class ShardStore:
    """Read access to a shards folder written by ``write_shards``: ``store[i]`` is image i.

    The manifest, labels and every shard's ``.npy`` header and file size are checked when the
    store is opened, so a truncated or altered file fails here with a ``DataError`` naming it
    rather than later inside numpy or a worker. Shards are memory-mapped lazily, per process:
    a pickled store (DataLoader workers under ``spawn``) carries only the paths and labels,
    never mapped pixels.

    Attributes:
        labels: int64 [N], identity index of each image (non-decreasing).
        identity_names: the identities' folder names, sorted.
        image_size: side S of the stored faces.
        manifest: the parsed ``manifest.json``.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DataError(f"shards folder {str(self.folder)!r} does not exist (xcos pack)")
        self.manifest = _read_manifest(self.folder / MANIFEST)
        self.image_size = int(self.manifest["image_size"])
        self.identity_names: list[str] = list(self.manifest["identity_names"])
        entries = self.manifest["shards"]
        self.files = [self.folder / entry["file"] for entry in entries]
        for path, entry in zip(self.files, entries, strict=True):
            _check_shard(path, entry, self.image_size)
        counts = [entry["images"] for entry in entries]
        self.offsets = [0, *np.cumsum(counts).tolist()]
        self.labels = _load_labels(self.folder / LABELS, len(self), len(self.identity_names))
        self._maps: list[np.ndarray | None] = [None] * len(self.files)

    def __len__(self) -> int:
        return self.offsets[-1]

    @property
    def counts(self) -> np.ndarray:
        """int64 [identities]: images per identity."""
        return np.bincount(self.labels, minlength=len(self.identity_names))

    def __getitem__(self, index: int) -> np.ndarray:
        """uint8 [3, S, S] view of image ``index`` (read from disk when its pixels are used)."""
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"image {index} is out of range for {len(self)} images")
        shard = bisect.bisect_right(self.offsets, index) - 1
        return self._shard(shard)[index - self.offsets[shard]]

    def face(self, index: int) -> np.ndarray:
        """Image ``index`` as RGB uint8 [S, S, 3] (the face-store interface of
        ``xcos.engine.features``, which caches a frozen backbone's outputs per store); a view
        of the memory map, which ``to_tensor`` copies once."""
        return self[index].transpose(1, 2, 0)

    @property
    def cache_key(self) -> str:
        """Identifies these shards for caches: a digest of the manifest, which names every
        shard with its size and the time the shards were written (any rewrite changes it)."""
        return hashlib.sha256((self.folder / MANIFEST).read_bytes()).hexdigest()

    def _shard(self, number: int) -> np.ndarray:
        mapped = self._maps[number]
        if mapped is None:
            mapped = np.load(self.files[number], mmap_mode="r", allow_pickle=False)
            self._maps[number] = mapped
        return mapped

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_maps"] = [None] * len(self.files)  # each process maps the files itself
        return state


def _read_manifest(path: Path) -> dict[str, Any]:
    """The manifest after checks of its format, version, types and counts."""
    manifest = read_manifest(
        path,
        missing="missing; not a shards folder (write one with xcos pack)",
        corrupt="rewrite the shards (xcos pack)",
    )
    if not isinstance(manifest, dict) or manifest.get("format") != SHARDS_FORMAT:
        raise DataError(f"{path}: not a shards manifest (format must be {SHARDS_FORMAT!r})")
    if manifest.get("version") != SHARDS_VERSION:
        raise DataError(
            f"{path}: shards format version {manifest.get('version')!r} is not supported; this "
            f"xcos reads version {SHARDS_VERSION}. Rewrite the shards (xcos pack)"
        )
    for key in ("image_size", "images"):
        _check_positive(path, key, manifest.get(key))
    names = manifest.get("identity_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise DataError(f"{path}: 'identity_names' must be a non-empty list of strings")
    shards = manifest.get("shards")
    if not isinstance(shards, list) or not shards:
        raise DataError(f"{path}: 'shards' must be a non-empty list")
    for number, entry in enumerate(shards):
        _check_entry(path, number, entry)
    total = sum(entry["images"] for entry in shards)
    if total != manifest["images"]:
        raise DataError(
            f"{path}: the shards hold {total} images in all, but 'images' says {manifest['images']}"
        )
    return manifest


def _check_positive(path: Path, key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(f"{path}: {key!r} must be a positive integer, got {value!r}")


def _check_entry(path: Path, number: int, entry: Any) -> None:
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
        raise DataError(f"{path}: shards[{number}] must be an object with a 'file' name")
    if Path(entry["file"]).name != entry["file"] or not entry["file"].endswith(".npy"):
        raise DataError(f"{path}: shards[{number}].file must be a plain .npy file name")
    for key in ("images", "bytes"):
        _check_positive(path, f"shards[{number}].{key}", entry.get(key))


def _check_shard(path: Path, entry: dict[str, Any], size: int) -> None:
    """Compare a shard's header and size with the manifest before it is ever mapped."""
    if not path.is_file():
        raise DataError(f"{path}: missing shard; rewrite the shards (xcos pack)")
    shape, dtype, data_start = _npy_header(path)
    expected = (entry["images"], 3, size, size)
    if shape != expected or dtype != np.uint8:
        raise DataError(
            f"{path}: the .npy header says {dtype} shape {list(shape)}, manifest.json says "
            f"uint8 shape {list(expected)}; the shard was altered, rewrite the shards"
        )
    actual = path.stat().st_size
    wanted = data_start + int(np.prod(shape))
    if actual != wanted or actual != entry["bytes"]:
        raise DataError(
            f"{path}: {actual} bytes on disk, expected {wanted} (header + uint8 "
            f"{list(shape)}; manifest.json says {entry['bytes']}); the shard is truncated or "
            "altered, rewrite the shards (xcos pack)"
        )


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, offset of the data) from a .npy header, without reading the data."""
    try:
        with path.open("rb") as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
            data_start = handle.tell()
    except (ValueError, OSError, EOFError) as err:
        raise DataError(f"{path}: not a readable .npy file ({err}); rewrite the shards") from None
    if fortran:
        raise DataError(f"{path}: stored in Fortran order; rewrite the shards (xcos pack)")
    return tuple(shape), dtype, data_start


def _load_labels(path: Path, images: int, identities: int) -> np.ndarray:
    """Labels [images] after checks: ids in range, sorted, every identity present."""
    if not path.is_file():
        raise DataError(f"{path}: missing; rewrite the shards (xcos pack)")
    try:
        labels = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise DataError(f"{path}: truncated or corrupt ({err}); rewrite the shards") from None
    if labels.dtype != np.int64 or labels.shape != (images,):
        raise DataError(
            f"{path}: {labels.dtype} shape {list(labels.shape)}, expected int64 [{images}] "
            "(one identity index per image, as manifest.json counts them)"
        )
    steps = np.diff(labels)
    if labels[0] != 0 or labels[-1] != identities - 1 or np.any((steps != 0) & (steps != 1)):
        raise DataError(
            f"{path}: labels must run identity by identity from 0 to {identities - 1} "
            f"(the manifest's identity_names), every identity with at least one image"
        )
    return labels


# --- training pairs ------------------------------------------------------------------------


@DATASETS.register("shard_pairs")
class ShardPairs(IdentityPairs):
    """Pairs (see ``IdentityPairs``) from a shards folder written by ``xcos pack``.

    Items equal those of ``image_folder_pairs`` on the source folder for the same seed, epoch
    and index, but each face is a memory copy instead of a JPEG decode.

    Args:
        root: the ``.shards`` folder.
        same_probability: chance of a same-identity pair.
        flip: random horizontal flip of each image (augmentation).
        seed: sampling seed (combined with the epoch and index).
        image_size: expected side of the stored faces (default: whatever was stored); shards
            are never resized on the fly, so a different size is an error.
    """

    def __init__(
        self,
        root: str,
        same_probability: float = 0.5,
        flip: bool = True,
        seed: int = 0,
        image_size: int | None = None,
    ) -> None:
        self.store = ShardStore(root)
        if image_size is not None and image_size != self.store.image_size:
            raise DataError(
                f"data.train.image_size: {image_size}, but {root} stores "
                f"{self.store.image_size}x{self.store.image_size} faces; remove image_size or "
                f"pack again with --size {image_size}"
            )
        if len(self.store.identity_names) < 2:
            raise DataError(f"{root}: pairs need at least 2 identities, found 1")
        super().__init__(self.store.counts, same_probability, flip, seed)
        self.labels = self.store.labels  # equal values; one array, pickled once per worker
        self.identity_names = self.store.identity_names
        self.image_size = self.store.image_size

    def face(self, index: int) -> np.ndarray:
        return self.store.face(index)
