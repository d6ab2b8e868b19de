"""Packs: prepared pair sets on disk (aligned faces + pairs), read memory-mapped.

A pack is a folder ``<name>.pack/`` holding

- ``faces.npy``: uint8 [M, 3, S, S], aligned RGB faces (channels first);
- ``pairs.npy``: int64 [N, 2], indices into ``faces``;
- ``labels.npy``: int64 [N], 1 same identity, 0 different;
- ``folds.npy``: int64 [N], evaluation fold of each pair;
- ``image_ids.json``: M strings naming where each face came from (file name or id);
- ``manifest.json``: format name and version, counts, image size, and free-form ``source``
  (e.g. hashes of the source files) and ``alignment`` (settings, fallback counts) objects;
- optionally ``extra.json``: per-pair string columns (``PairSet.extra``).

Plain ``.npy`` and JSON keep packs readable without pickle (``allow_pickle=False`` always) and
let ``faces.npy`` be memory-mapped, so large sets cost no RAM until faces are used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from xcos.data.pair_sets import PairSet
from xcos.errors import DataError
from xcos.io_utils import atomic_folder, read_manifest, write_synced
from xcos.registry import PAIR_SETS

PACK_FORMAT = "xcos-pack"
PACK_VERSION = 1
PACK_SUFFIX = ".pack"
ARRAYS = ("faces", "pairs", "labels", "folds")


def write_pack(
    folder: str | Path,
    faces: np.ndarray,
    pairs: Any,
    labels: Any,
    folds: Any,
    image_ids: list[str],
    source: dict | None = None,
    alignment: dict | None = None,
    *,
    extra: dict[str, list[str]] | None = None,
    overwrite: bool = False,
) -> Path:
    """Validate and write a pack atomically; returns its folder.

    Args:
        folder: the pack folder; its name must end in ``.pack``.
        faces: uint8 [M, 3, S, S] aligned RGB faces (any array, memory-mapped ones included).
        pairs: integer [N, 2] indices into ``faces``.
        labels: [N] 0/1 (integers or bools).
        folds: non-negative integer [N].
        image_ids: M strings, one per face.
        source, alignment: JSON-serialisable provenance, stored in the manifest.
        extra: per-pair string columns, each of length N (kept as ``PairSet.extra``).
        overwrite: replace an existing pack instead of failing.

    The pack is written into a hidden temporary sibling folder and renamed into place, so
    readers never see a half-written pack, and a failed write leaves no folder behind.

    Raises:
        DataError: a wrong shape, dtype, index, label, fold, id or non-JSON provenance (the
            message names the argument), or an existing pack without ``overwrite``.
    """
    target = Path(folder)
    where = f"write_pack({str(target)!r})"
    if target.suffix != PACK_SUFFIX:
        raise DataError(f"{where}: a pack folder name must end in {PACK_SUFFIX!r}")
    arrays = _validated_arrays(where, faces, pairs, labels, folds)
    members = _json_members(where, arrays, image_ids, source, alignment, extra)
    if target.exists() and not overwrite:
        raise DataError(f"{where}: already exists; delete it or pass overwrite=True")
    with atomic_folder(target) as temp:
        for key, array in arrays.items():
            write_synced(temp / f"{key}.npy", lambda handle, a=array: np.save(handle, a))
        for file_name, content in members.items():
            text = json.dumps(content, indent=1, ensure_ascii=False) + "\n"
            write_synced(temp / file_name, lambda handle, t=text: handle.write(t.encode()))
    return target


@PAIR_SETS.register("pack")
def read_pack(path: str, name: str | None = None) -> PairSet:
    """Read a pack written by ``write_pack``.

    Returns:
        A ``PairSet`` whose ``images`` is ``faces.npy`` memory-mapped read-only (an
        ``np.memmap``, uint8 [M, 3, S, S]); ``pairs`` int64 [N, 2], ``labels`` int64 [N],
        ``folds`` int64 [N]; ``extra`` from ``extra.json`` when present. ``name`` defaults
        to the folder name without ``.pack``.

    Raises:
        DataError: naming the member file, when it is missing, truncated or corrupt, disagrees
            with the manifest, or the manifest's format version is not supported.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"pack {str(folder)!r} does not exist or is not a folder")
    manifest = _read_manifest(folder / "manifest.json")
    count, pair_count, size = manifest["images"], manifest["pairs"], manifest["image_size"]
    faces = _load_array(folder / "faces.npy", (count, 3, size, size), mmap=True)
    pairs = _load_array(folder / "pairs.npy", (pair_count, 2))
    labels = _load_array(folder / "labels.npy", (pair_count,))
    folds = _load_array(folder / "folds.npy", (pair_count,))
    _check_values(str(folder / "pairs.npy"), pairs, count)
    _check_labels(str(folder / "labels.npy"), labels)
    _check_folds(str(folder / "folds.npy"), folds)
    _check_strings(str(folder / "image_ids.json"), _read_json(folder / "image_ids.json"), count)
    return PairSet(
        name=name or folder.name.removesuffix(PACK_SUFFIX),
        images=faces,
        pairs=pairs.astype(np.int64, copy=False),
        labels=labels.astype(np.int64, copy=False),
        folds=folds.astype(np.int64, copy=False),
        extra=_read_extra(folder / "extra.json", pair_count),
    )


# --- writing -------------------------------------------------------------------------------


def _validated_arrays(
    where: str, faces: np.ndarray, pairs: Any, labels: Any, folds: Any
) -> dict[str, np.ndarray]:
    """The four arrays in their stored dtypes, after shape, dtype and value checks."""
    if not isinstance(faces, np.ndarray) or faces.dtype != np.uint8:
        kind = faces.dtype if isinstance(faces, np.ndarray) else type(faces).__name__
        raise DataError(f"{where}: faces must be a uint8 numpy array, got {kind}")
    if faces.ndim != 4 or faces.shape[1] != 3 or faces.shape[2] != faces.shape[3]:
        raise DataError(f"{where}: faces must have shape [M, 3, S, S], got {list(faces.shape)}")
    if faces.shape[0] < 1 or faces.shape[2] < 1:
        raise DataError(f"{where}: faces is empty: shape {list(faces.shape)}")
    pairs = _integer_array(f"{where}: pairs", pairs)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or len(pairs) < 1:
        raise DataError(f"{where}: pairs must have shape [N, 2], N >= 1, got {list(pairs.shape)}")
    labels = _integer_array(f"{where}: labels", labels, bool_ok=True)
    folds = _integer_array(f"{where}: folds", folds)
    for key, array in (("labels", labels), ("folds", folds)):
        if array.shape != (len(pairs),):
            raise DataError(
                f"{where}: {key} must have shape [{len(pairs)}] (one per pair), "
                f"got {list(array.shape)}"
            )
    _check_values(f"{where}: pairs", pairs, len(faces))
    _check_labels(f"{where}: labels", labels)
    _check_folds(f"{where}: folds", folds)
    return {"faces": faces, "pairs": pairs, "labels": labels, "folds": folds}


def _integer_array(where: str, value: Any, bool_ok: bool = False) -> np.ndarray:
    array = np.asarray(value)
    if bool_ok and array.dtype == np.bool_:
        return array.astype(np.int64)
    if not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"{where} must hold integers, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


def _json_members(
    where: str,
    arrays: dict[str, np.ndarray],
    image_ids: list[str],
    source: dict | None,
    alignment: dict | None,
    extra: dict[str, list[str]] | None,
) -> dict[str, Any]:
    """Contents of the JSON members, keyed by file name (manifest last: it is the seal)."""
    faces, labels = arrays["faces"], arrays["labels"]
    _check_strings(f"{where}: image_ids", image_ids, len(faces))
    members: dict[str, Any] = {"image_ids.json": list(image_ids)}
    if extra:
        _check_extra(f"{where}: extra", extra, len(labels))
        members["extra.json"] = {key: list(column) for key, column in extra.items()}
    for key, value in (("source", source), ("alignment", alignment)):
        if value is not None and not isinstance(value, dict):
            raise DataError(f"{where}: {key} must be a dict or None, got {type(value).__name__}")
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise DataError(f"{where}: {key} is not JSON-serialisable: {err}") from None
    members["manifest.json"] = {
        "format": PACK_FORMAT,
        "version": PACK_VERSION,
        "images": int(faces.shape[0]),
        "pairs": len(labels),
        "image_size": int(faces.shape[2]),
        "layout": "uint8 [M, 3, S, S] RGB",
        "same_pairs": int(labels.sum()),
        "fold_count": len(np.unique(arrays["folds"])),
        "source": source or {},
        "alignment": alignment or {},
    }
    return members


# --- reading -------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    return read_manifest(
        path,
        missing="missing pack member; rebuild the pack (xcos prepare)",
        corrupt="rebuild the pack",
    )


def _read_manifest(path: Path) -> dict[str, Any]:
    manifest = _read_json(path)
    if not isinstance(manifest, dict) or manifest.get("format") != PACK_FORMAT:
        raise DataError(f"{path}: not an xcos pack manifest (format must be {PACK_FORMAT!r})")
    version = manifest.get("version")
    if version != PACK_VERSION:
        raise DataError(
            f"{path}: pack format version {version!r} is not supported; this xcos reads "
            f"version {PACK_VERSION}. Rebuild the pack with this version (xcos prepare)"
        )
    for key in ("images", "pairs", "image_size"):
        value = manifest.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DataError(f"{path}: {key!r} must be a positive integer, got {value!r}")
    return manifest


def _load_array(path: Path, shape: tuple[int, ...], mmap: bool = False) -> np.ndarray:
    """Load a member and check its shape against the manifest (and faces' dtype)."""
    if not path.is_file():
        raise DataError(f"{path}: missing pack member; rebuild the pack (xcos prepare)")
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise DataError(f"{path}: truncated or corrupt ({err}); rebuild the pack") from None
    if array.shape != shape:
        raise DataError(
            f"{path}: shape {list(array.shape)} disagrees with manifest.json ({list(shape)})"
        )
    wanted = np.uint8 if path.name == "faces.npy" else np.int64
    if array.dtype != wanted:
        raise DataError(f"{path}: dtype {array.dtype}, expected {np.dtype(wanted)}")
    return array


def _read_extra(path: Path, pair_count: int) -> dict[str, list[str]]:
    if not path.exists():
        return {}
    extra = _read_json(path)
    _check_extra(str(path), extra, pair_count)
    return extra


# --- checks shared by writing and reading ---------------------------------------------------


def _check_values(where: str, pairs: np.ndarray, image_count: int) -> None:
    if pairs.size and (pairs.min() < 0 or pairs.max() >= image_count):
        raise DataError(
            f"{where}: indices must lie in [0, {image_count}), found "
            f"{int(pairs.min())}..{int(pairs.max())}"
        )


def _check_labels(where: str, labels: np.ndarray) -> None:
    bad = np.flatnonzero((labels != 0) & (labels != 1))
    if bad.size:
        raise DataError(
            f"{where}: labels must be 0 or 1; pair {int(bad[0])} has {int(labels[bad[0]])} "
            f"({bad.size} bad in all)"
        )


def _check_folds(where: str, folds: np.ndarray) -> None:
    if folds.size and folds.min() < 0:
        raise DataError(f"{where}: folds must be >= 0, found {int(folds.min())}")


def _check_strings(where: str, values: Any, count: int, per: str = "face") -> None:
    if not isinstance(values, (list, tuple)) or len(values) != count:
        size = len(values) if isinstance(values, (list, tuple)) else type(values).__name__
        raise DataError(f"{where}: expected a list of {count} strings (one per {per}), got {size}")
    bad = next((i for i, v in enumerate(values) if not isinstance(v, str)), None)
    if bad is not None:
        raise DataError(f"{where}: item {bad} is {type(values[bad]).__name__}, not a string")


def _check_extra(where: str, extra: Any, pair_count: int) -> None:
    if not isinstance(extra, dict):
        raise DataError(f"{where}: expected an object of per-pair string columns")
    for key, column in extra.items():
        _check_strings(f"{where}[{key!r}]", column, pair_count, per="pair")
