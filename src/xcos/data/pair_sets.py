"""Verification pair sets: distinct images, pairs of indices into them, labels and folds.

Every reader returns the same ``PairSet`` so the evaluator embeds each distinct image once.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xcos.data.folds import contiguous_folds
from xcos.data.images import image_size, read_face, read_rgb, unaligned_message
from xcos.errors import DataError, UnalignedImageError
from xcos.registry import PAIR_SETS


@dataclass
class PairSet:
    """``pairs`` [N, 2] index ``images``; ``labels`` [N] (1 same, 0 different); ``folds`` [N].

    ``images`` holds either file paths (decoded on demand) or aligned RGB faces as a uint8
    array ``[M, 3, S, S]`` (for example a memory-mapped pack). ``source``: the pair list or
    pack it was read from (``load_pair_set`` sets it), named by errors.

    Faces are never resized: asked for faces of a size ``S`` (the model's input size), an
    image of any other size raises ``UnalignedImageError`` naming the file, its size, ``S`` and
    the ``xcos prepare`` command that aligns the set (``check_image_size`` checks them all).
    """

    name: str
    images: Sequence[str] | np.ndarray
    pairs: np.ndarray
    labels: np.ndarray
    folds: np.ndarray
    extra: dict[str, list[str]] = field(default_factory=dict)
    source: str | None = None
    _checked_sizes: set[int] = field(default_factory=set, init=False, repr=False, compare=False)

    def release_face_pages(self) -> None:
        """Map a memory-mapped pack's faces afresh: the pages that a pass over them touched
        leave this process's resident memory (the kernel's page cache keeps them), e.g. once
        a frozen backbone's outputs of the faces are cached. Other images stay as they are."""
        if isinstance(self.images, np.memmap) and self.images.filename is not None:
            self.images = np.load(self.images.filename, mmap_mode="r", allow_pickle=False)

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int, size: int | None = None) -> np.ndarray:
        """Distinct image ``index`` as RGB uint8 [S, S, 3]. With ``size``, it must be an
        aligned ``size`` x ``size`` face, else ``UnalignedImageError`` (never resized)."""
        if isinstance(self.images, np.ndarray):
            face = np.ascontiguousarray(np.asarray(self.images[index]).transpose(1, 2, 0))
            if size is not None and face.shape[:2] != (size, size):
                raise UnalignedImageError(self._faces_message(face.shape[0], size))
            return face
        if size is None:
            return read_rgb(self.images[index])
        return read_face(self.images[index], size, self.alignment_hint(size))

    def image_reader(self, size: int | None = None) -> Callable[[int], np.ndarray]:
        """``image`` as a function of the index only, at ``size``."""
        return lambda index: self.image(index, size)

    def check_image_size(self, size: int, template: str | None = None) -> None:
        """Raise ``UnalignedImageError`` unless every image is an aligned ``size`` x ``size``
        face (the model's input size); the message names the first other image, its size and
        the command that aligns the set for a model of ``template``. Image files are checked
        from their headers, once per size."""
        if size in self._checked_sizes:
            return
        if isinstance(self.images, np.ndarray):
            if tuple(self.images.shape[-2:]) != (size, size):
                raise UnalignedImageError(
                    self._faces_message(self.images.shape[-1], size, template)
                )
        else:
            hint = self.alignment_hint(size, template)
            wrong = [(p, found) for p in self.images if (found := image_size(p)) != (size, size)]
            if wrong:
                path, found = wrong[0]
                raise UnalignedImageError(
                    f"{self.name}: {len(wrong)} of {len(self.images)} image(s) are not aligned "
                    f"{size}x{size} faces; first: {unaligned_message(path, found, size, hint)}"
                )
        self._checked_sizes.add(size)

    def _faces_message(self, found: int, size: int, template: str | None = None) -> str:
        return (
            f"{self.name}: holds aligned {found}x{found} faces, the model takes {size}x{size} "
            "ones (faces are never resized silently: a face aligned for another model is not "
            f"one aligned for this one). {self.alignment_hint(size, template)}"
        )

    def alignment_hint(self, size: int, template: str | None = None) -> str:
        """How to align this set for a model taking ``size`` x ``size`` faces of ``template``
        (default: dlib's for 150, else ArcFace's): the ``xcos prepare`` command or ``align``."""
        return alignment_hint(self.source, isinstance(self.images, np.ndarray), size, template)

    def select(self, keep: np.ndarray) -> tuple[PairSet, np.ndarray]:
        """The pairs ``keep`` (indices or a boolean mask) with only the images they use,
        re-indexed; also the original indices of those images."""
        keep = np.flatnonzero(keep) if keep.dtype == bool else np.asarray(keep, dtype=np.int64)
        used, inverse = np.unique(self.pairs[keep], return_inverse=True)
        images = (
            self.images[used]
            if isinstance(self.images, np.ndarray)
            else [self.images[i] for i in used]
        )
        part = PairSet(
            name=self.name,
            images=images,
            pairs=inverse.reshape(-1, 2).astype(np.int64),
            labels=self.labels[keep],
            folds=self.folds[keep],
            extra={key: [values[i] for i in keep] for key, values in self.extra.items()},
            source=self.source,
        )
        return part, used

    def content_key(self) -> str | None:
        """A digest of the faces when they are held as an array (a pack), else None."""
        if not isinstance(self.images, np.ndarray):
            return None
        digest = hashlib.sha256()
        for start in range(0, len(self.images), 1024):  # a memory-mapped pack, in slices
            digest.update(np.ascontiguousarray(self.images[start : start + 1024]).tobytes())
        return digest.hexdigest()


@PAIR_SETS.register("csv")
def read_pair_csv(path: str, name: str | None = None, folds: int = 10) -> PairSet:
    """CSV with header ``path_a,path_b,label[,fold]`` (more columns are kept in ``extra``).

    Paths are absolute or relative to the CSV's folder. Without a ``fold`` column the pairs
    are split into ``folds`` contiguous folds.
    """
    csv_path = Path(path)
    if not csv_path.is_file():
        raise DataError(f"pair list {str(csv_path)!r} does not exist")
    with csv_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [c for c in ("path_a", "path_b", "label") if c not in header]
        if missing:
            raise DataError(
                f"{csv_path}: header must start with path_a,path_b,label[,fold]; missing {missing}"
            )
        rows = list(reader)
    if not rows:
        raise DataError(f"{csv_path}: no pairs")
    index: dict[str, int] = {}
    pairs, labels, fold_ids = [], [], []
    for line, row in enumerate(rows, start=2):
        label = row["label"].strip()
        if label not in ("0", "1"):
            raise DataError(f"{csv_path}:{line}: label must be 0 or 1, got {label!r}")
        labels.append(int(label))
        pair = []
        for column in ("path_a", "path_b"):
            resolved = str((csv_path.parent / row[column].strip()).resolve())
            pair.append(index.setdefault(resolved, len(index)))
        pairs.append(pair)
        if "fold" in header:
            fold_ids.append(_parse_fold(row["fold"], csv_path, line))
    images = list(index)
    _check_images_exist(images, csv_path)
    extra_columns = [c for c in header if c not in ("path_a", "path_b", "label", "fold")]
    return PairSet(
        name=name or csv_path.stem,
        images=images,
        pairs=np.asarray(pairs, dtype=np.int64),
        labels=np.asarray(labels, dtype=np.int64),
        folds=np.asarray(fold_ids) if fold_ids else contiguous_folds(len(rows), folds),
        extra={c: [row[c] for row in rows] for c in extra_columns},
        source=str(csv_path),
    )


def alignment_hint(source: str | None, aligned: bool, size: int, template: str | None) -> str:
    """How to get aligned ``size`` x ``size`` faces of ``template`` from the pair set read from
    ``source`` (``aligned``: its faces come from an alignment already, e.g. a pack)."""
    template = template or ("dlib" if size == 150 else "arcface")
    flags = f"--template {template}" + (
        "" if size == TEMPLATE_SIZES.get(template) else f" --size {size}"
    )
    settings = json.dumps({"template": template, "image_size": size})
    if source is None:
        return f"Align the images first: `xcos prepare ... {flags}`"
    path = Path(source)
    suffix, pack = path.suffix.lower(), path.with_suffix(".pack")
    if suffix == ".pack":
        return (
            f"Prepare the pack again for this model: `xcos prepare ... {flags} --out {path} "
            "--overwrite`"
        )
    if suffix == ".bin":
        return (
            "An InsightFace .bin holds faces aligned once, for models of its size: test this "
            f"model on a pair set aligned for it (`xcos prepare ... {flags}`)"
        )
    if aligned:  # aligned through the cache, with settings for another model
        return f'Align it for this model: set the pair set\'s "align" to {settings}'
    if suffix == ".txt":
        return (
            f"Align the LFW pairs first: `xcos prepare --pairs {path} {flags} --select central "
            f'--no-face center_crop --out {pack}`, or set the pair set\'s "align" to {settings}'
        )
    return (
        f"Align the pair list first: `xcos prepare --csv {path} {flags} --out {pack}` and give "
        f"{pack} as the pair set (in a config, the pair set "
        f'{{"type": "csv", "path": "{path}", "align": {settings}}} aligns it through the cache)'
    )


def _parse_fold(text: str, path: Path, line: int) -> int:
    try:
        return int(text)
    except ValueError:
        raise DataError(f"{path}:{line}: fold must be an integer, got {text!r}") from None


def _check_images_exist(images: list[str], source: Path) -> None:
    missing = [p for p in images if not Path(p).is_file()]
    if missing:
        raise DataError(
            f"{source}: {len(missing)} image(s) not found, first: {', '.join(missing[:3])}"
        )


#: The side of the faces each alignment template makes by default (``xcos prepare --template``).
TEMPLATE_SIZES = {"arcface": 112, "dlib": 150}
#: MTCNN's smallest face for LFW's 250 x 250 photos, whose faces are 80-150 px wide: the
#: default image pyramid (20 px, factor 0.709) without its three largest scales, which search
#: for faces under 56 px and cost most of the detection time. The scales that remain are the
#: default's, so the faces found are the default's: landmarks within 1 px for 99.71% of LFW's
#: 13,233 images (``doc/performance.md``).
LFW_MIN_FACE = 20 / 0.709**3
#: LFW's deep-funneled photos are centred: the central face, a centred crop in the rare image
#: where none is found (counted in the alignment stats), and the shorter pyramid above.
LFW_ALIGNMENT = {"select": "central", "no_face": "center_crop", "min_face_size": LFW_MIN_FACE}


def lfw_alignment(align: dict[str, Any] | None) -> dict[str, Any]:
    """``align`` over LFW's alignment settings; MTCNN's pyramid setting only for MTCNN."""
    settings = LFW_ALIGNMENT | dict(align or {})
    if settings.get("aligner", "mtcnn") != "mtcnn" and "min_face_size" not in (align or {}):
        del settings["min_face_size"]  # dlib's detector has no image pyramid setting
    return settings
