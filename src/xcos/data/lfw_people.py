"""Training pairs from the people of an LFW people file, aligned once through the cache.

LFW's View 2 folds are identity-disjoint: the pairs of fold k use only the people of set k of
``people.txt``. Training on the people of the other nine sets and testing on fold k is the
honest protocol for anything learned on LFW (``xcos lfw-protocol``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from xcos.data.image_folder import IdentityPairs
from xcos.data.lfw import lfw_image_path, read_lfw_people
from xcos.data.npy_rows import NpyRows
from xcos.data.pair_sets import lfw_alignment
from xcos.errors import DataError
from xcos.registry import DATASETS


def people_of_sets(
    people: str, sets: list[int] | None = None, exclude_sets: list[int] | None = None
) -> list[tuple[str, int]]:
    """(name, image count) of the people in the chosen 1-based sets of an LFW people file."""
    all_sets = read_lfw_people(people)
    numbers = list(range(1, len(all_sets) + 1)) if sets is None else list(sets)
    for number in [*numbers, *(exclude_sets or [])]:
        if not 1 <= number <= len(all_sets):
            raise DataError(
                f"{people}: set {number} does not exist; the file has sets 1..{len(all_sets)}"
            )
    chosen = [n for n in numbers if n not in set(exclude_sets or [])]
    if not chosen:
        raise DataError(f"{people}: no set left after sets={sets}, exclude_sets={exclude_sets}")
    return [person for number in chosen for person in all_sets[number - 1]]


class LFWFaceStore:
    """Every image of an LFW images folder, aligned once (cached by content), by path.

    One store serves every LFW file (people sets, View 1 and View 2 pairs), so a face is
    aligned, and a frozen backbone run on it, once whatever split uses it.
    """

    def __init__(self, root: Path, align: dict[str, Any] | None, where: str) -> None:
        self.root = root
        paths = sorted(root.glob("*/*.jpg"))
        if not paths:
            raise DataError(f"{where}: no LFW images (<name>/<name>_NNNN.jpg) under {root}")
        real_folder = functools.lru_cache(maxsize=None)(os.path.realpath)
        self.index = {real_path(path, real_folder): i for i, path in enumerate(paths)}
        self._real_folder = real_folder
        self.faces, self.cache_key = aligned_faces(paths, align, where)

    def __len__(self) -> int:
        return len(self.faces)

    def face(self, index: int) -> np.ndarray:
        """Aligned face ``index`` as RGB uint8 [S, S, 3] (a view: ``to_tensor`` copies it)."""
        return np.asarray(self.faces[index]).transpose(1, 2, 0)

    def indices(self, paths: list[str] | list[Path], where: str) -> np.ndarray:
        """Store indices of image paths; errors name the first path not in the store."""
        try:
            keys = (real_path(Path(p), self._real_folder) for p in paths)
            return np.array([self.index[key] for key in keys], dtype=np.int64)
        except KeyError as err:
            raise DataError(f"{where}: image {err.args[0]} is not under {self.root}") from None


def real_path(path: Path, real_folder: Callable[[str], str]) -> str:
    """``path`` with its folder's links resolved, the folder through ``real_folder`` (a
    memoised ``os.path.realpath``): a path named through ``data/lfw`` or through the folder
    it links to is one image, for one system call per person's folder instead of one per
    path component of each of LFW's 13,233 images (seconds per training run)."""
    return os.path.join(real_folder(os.path.abspath(path.parent)), path.name)


@DATASETS.register("lfw_people_pairs")
class LFWPeoplePairs(IdentityPairs):
    """Pairs (see ``IdentityPairs``) over every image of the chosen LFW people.

    Args:
        people: an LFW people file: ``people.txt`` (10 sets) or ``peopleDevTrain.txt``.
        sets: 1-based sets of that file to use (default: all).
        exclude_sets: sets to leave out (e.g. the test fold of the 10-fold protocol).
        images: the images folder (default: ``images/`` beside the people file, else its
            folder).
        align: aligner settings (``xcos.data.aligners.make_aligner``: ``FaceAligner``'s, e.g.
            ``{"template": "dlib", "image_size": 150}``, or ``{"aligner": "dlib"}``);
            every image of the folder is aligned once and cached by content under
            ``$XCOS_CACHE/faces`` (see ``LFWFaceStore``).
        same_probability: chance of a same-identity pair.
        flip: random horizontal flip of each face.
        seed: sampling seed.
    """

    def __init__(
        self,
        people: str,
        sets: list[int] | None = None,
        exclude_sets: list[int] | None = None,
        images: str | None = None,
        align: dict[str, Any] | None = None,
        same_probability: float = 0.5,
        flip: bool = True,
        seed: int = 0,
    ) -> None:
        persons = people_of_sets(people, sets, exclude_sets)
        if len(persons) < 2:
            raise DataError(f"{people}: pairs need at least 2 people, the chosen sets hold 1")
        super().__init__([count for _, count in persons], same_probability, flip, seed)
        self.identity_names = [name for name, _ in persons]
        self.people = people
        self.root = images_folder(Path(people), images)
        self.store = LFWFaceStore(self.root, align, "data.train.align")
        self.store_index = self.store.indices(image_paths(people, self.root, persons), people)

    def face(self, index: int) -> np.ndarray:
        return self.store.face(int(self.store_index[index]))

    def everyone(self) -> StorePairs:
        """Pairs over every person of this data set's people file (all its sets), on the same
        face store: measured training pairs (``data.effects``) are drawn from these once for
        every fold of the protocol, each fold keeping those of its own people."""
        persons = people_of_sets(self.people)
        paths = image_paths(self.people, self.root, persons)
        return StorePairs(
            [count for _, count in persons],
            self.same_probability,
            self.flip,
            self.seed,
            self.store,
            self.store.indices(paths, self.people),
        )


class StorePairs(IdentityPairs):
    """Pairs (see ``IdentityPairs``) over faces of an ``LFWFaceStore`` at ``store_index``."""

    def __init__(
        self,
        counts: list[int],
        same_probability: float,
        flip: bool,
        seed: int,
        store: LFWFaceStore,
        store_index: np.ndarray,
    ) -> None:
        super().__init__(counts, same_probability, flip, seed)
        self.store, self.store_index = store, store_index

    def face(self, index: int) -> np.ndarray:
        return self.store.face(int(self.store_index[index]))


def image_paths(people: str, root: Path, persons: list[tuple[str, int]]) -> list[Path]:
    """The image paths of ``persons`` under ``root``; an error names the first one missing."""
    paths = [
        lfw_image_path(root, name, number)
        for name, count in persons
        for number in range(1, count + 1)
    ]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataError(
            f"{people}: {len(missing)} listed image(s) missing under {root}, first: {missing[0]}"
        )
    return paths


def images_folder(people: Path, images: str | None) -> Path:
    if images is not None:
        return Path(images)
    nested = people.parent / "images"
    return nested if nested.is_dir() else people.parent


def aligned_faces(
    paths: list[Path], align: dict[str, Any] | None, where: str
) -> tuple[NpyRows, str]:
    """Faces [M, 3, S, S] of ``paths`` aligned with ``align`` settings, through the cache
    (rows read on demand)."""
    from xcos.data.aligners import make_aligner
    from xcos.data.prepare import cached_faces

    return cached_faces(paths, make_aligner(lfw_alignment(align), where))
