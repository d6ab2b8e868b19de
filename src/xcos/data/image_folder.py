"""Training pairs from an image folder with one sub-folder per identity."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from xcos.data.images import IMAGE_EXTENSIONS, read_face, read_rgb, to_tensor, unaligned_message
from xcos.data.images import image_size as file_size
from xcos.data.perturb import (
    Perturbation,
    PerturbSettings,
    apply_perturbation,
    draw_perturbation,
    perturbation_fields,
)
from xcos.errors import BadImageError, DataError
from xcos.registry import DATASETS

log = logging.getLogger(__name__)


def scan_image_folder(root: Path) -> tuple[list[str], list[list[Path]]]:
    """(identity names, image paths per identity), both sorted; errors name the folder."""
    if not root.is_dir():
        raise DataError(
            f"data.train.root: folder {str(root)!r} does not exist. Set it to an image folder "
            "with one sub-folder of aligned 112x112 face images per identity"
        )
    names, images, empty = [], [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            empty.append(folder.name)
            continue
        names.append(folder.name)
        images.append(files)
    if empty:
        raise DataError(
            f"{root}: {len(empty)} identity folder(s) hold no images "
            f"({', '.join(empty[:5])}{', ...' if len(empty) > 5 else ''}); "
            f"accepted extensions: {' '.join(IMAGE_EXTENSIONS)}"
        )
    if len(names) < 2:
        raise DataError(
            f"{root}: pairs need at least 2 identity sub-folders with images, found {len(names)}"
        )
    return names, images


def split_key(key: int | tuple[int, int]) -> tuple[int | None, int]:
    """(epoch or None, index) of a data set key: an index or an ``(epoch, index)`` pair."""
    if isinstance(key, tuple):
        return int(key[0]), int(key[1])
    return None, int(key)


class IdentityPairs(Dataset):
    """Training pairs from images grouped by identity (subclasses say how to read a face).

    Each image is an anchor once per epoch; its partner is another image of the same
    identity with probability ``same_probability``, else an image of a random other identity.
    Sampling is O(1) and a pure function of (seed, epoch, index), so data order does not depend
    on worker processes and resuming reproduces it. Identities with a single image always get a
    different-identity partner (no endless search for a second image).

    Items: ``image_a``, ``image_b`` [3, S, S] normalised RGB; ``identity_a``, ``identity_b``
    (class indices); ``label`` (1 same identity, 0 different). A key is an index (the epoch
    set by ``set_epoch``) or an ``(epoch, index)`` pair, as the trainer's sampler yields: with
    persistent DataLoader workers the copies of the data set in the workers never see
    ``set_epoch``, so the epoch travels with each key.

    With ``perturb`` set (``data.perturb``, see ``xcos.data.perturb``), items also carry B*:
    face B with a pasted or covered rectangle, one of ``perturb.variants`` drawn per face.

    Args:
        counts: images per identity; images are numbered identity by identity.
        same_probability: chance of a same-identity pair.
        flip: random horizontal flip of each image (augmentation).
        seed: sampling seed (combined with the epoch and index).
    """

    perturb: PerturbSettings | None = None  # set by the trainer from data.perturb

    def __init__(
        self, counts: Sequence[int], same_probability: float, flip: bool, seed: int
    ) -> None:
        counts = np.asarray(counts, dtype=np.int64)
        self.labels = np.repeat(np.arange(len(counts)), counts)
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        self.same_probability = same_probability
        self.flip = flip
        self.seed = seed
        self.epoch = 0

    @property
    def num_classes(self) -> int:
        return len(self.offsets) - 1

    def set_epoch(self, epoch: int) -> None:
        """Pairs and flips differ per epoch; call before iterating an epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def face(self, index: int) -> np.ndarray:
        """Image ``index`` as RGB uint8 [S, S, 3]."""
        raise NotImplementedError

    def partner(self, index: int, rng: np.random.Generator) -> int:
        label = self.labels[index]
        start, stop = self.offsets[label], self.offsets[label + 1]
        if stop - start > 1 and rng.random() < self.same_probability:
            other = start + rng.integers(stop - start - 1)
            return int(other + (other >= index))  # any image of the identity but the anchor
        other_label = rng.integers(self.num_classes - 1)
        other_label += other_label >= label  # any identity but the anchor's
        return int(
            self.offsets[other_label]
            + rng.integers(self.offsets[other_label + 1] - self.offsets[other_label])
        )

    def other_identity(self, index: int, rng: np.random.Generator) -> int:
        """A random image of any identity but image ``index``'s."""
        label = self.labels[index]
        other_label = rng.integers(self.num_classes - 1)
        other_label += other_label >= label
        start, stop = self.offsets[other_label], self.offsets[other_label + 1]
        return int(start + rng.integers(stop - start))

    def perturbation(self, index: int, variant: int) -> Perturbation:
        """Variant ``variant`` of the perturbation of image ``index`` (a pure function)."""
        if self.perturb is None:
            raise ValueError("this data set has no data.perturb settings")
        rng = np.random.default_rng([self.perturb.seed, index, variant])
        return draw_perturbation(self.perturb, rng, lambda r: self.other_identity(index, r))

    def perturbed_face(self, index: int, variant: int, flip: bool) -> torch.Tensor:
        """Image ``index`` with its perturbation ``variant``, then flipped or not [3, S, S]
        (a frozen backbone's cache mirrors the perturbed face the same way)."""
        perturbation = self.perturbation(index, variant)
        donor = perturbation[2]
        face = apply_perturbation(
            self.load(index, False), perturbation, self.load(donor, False) if donor >= 0 else None
        )
        return face.flip(-1) if flip else face

    def sample(self, index: int, epoch: int | None = None) -> tuple[int, bool, bool]:
        """The partner of anchor ``index`` in ``epoch`` (default: the one set) and whether each
        face is flipped."""
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng([self.seed, epoch, index])
        other = self.partner(index, rng)
        flips = rng.random(2) < 0.5 if self.flip else (False, False)
        return other, bool(flips[0]), bool(flips[1])

    def load(self, index: int, flip: bool) -> torch.Tensor:
        image = self.face(index)
        if flip:
            image = image[:, ::-1]
        return to_tensor(image)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        return self.pair_item(key, self.image_fields, self.perturbed_image)

    def image_fields(self, index: int, flip: bool, side: str) -> dict[str, torch.Tensor]:
        return {f"image_{side}": self.load(index, flip)}

    def perturbed_image(self, index: int, variant: int, flip: bool) -> dict[str, torch.Tensor]:
        return {"image_perturbed": self.perturbed_face(index, variant, flip)}

    def pair_item(
        self,
        key: int | tuple[int, int],
        face_fields: Callable[[int, bool, str], dict],
        perturbed_fields: Callable[[int, int, bool], dict] | None = None,
    ) -> dict[str, torch.Tensor]:
        """The item of ``key``: ``face_fields(index, flipped, "a" | "b")`` describes each face
        (images here; a frozen backbone's cached outputs in ``CachedFeaturePairs``), plus the
        identities and the label; with ``perturb`` set, ``perturbed_fields(index, variant,
        flipped)`` describes B* and ``perturbation_fields`` its rectangle."""
        epoch, index = split_key(key)
        other, flip_a, flip_b = self.sample(index, epoch)
        label_a, label_b = int(self.labels[index]), int(self.labels[other])
        item = {
            **face_fields(index, flip_a, "a"),
            **face_fields(other, flip_b, "b"),
            "identity_a": torch.tensor(label_a),
            "identity_b": torch.tensor(label_b),
            "label": torch.tensor(int(label_a == label_b)),
        }
        if self.perturb is not None and perturbed_fields is not None:
            epoch = self.epoch if epoch is None else epoch
            rng = np.random.default_rng([self.seed, epoch, index, 1])
            variant = int(rng.integers(self.perturb.variants))
            perturbation = self.perturbation(other, variant)
            if flip_b:  # drawn on the unflipped face: mirror the box as B is seen
                x0, y0, x1, y1 = perturbation[1]
                perturbation = (perturbation[0], (1 - x1, y0, 1 - x0, y1), *perturbation[2:])
            item.update(perturbed_fields(other, variant, flip_b))
            item.update(perturbation_fields(perturbation))
        return item


@DATASETS.register("image_folder_pairs")
class ImageFolderPairs(IdentityPairs):
    """Pairs (see ``IdentityPairs``) from a folder with one sub-folder of images per identity.

    Args:
        root: folder with one sub-folder of images per identity.
        same_probability: chance of a same-identity pair.
        flip: random horizontal flip of each image (augmentation).
        image_size: the side of the aligned square faces the folder holds (the model's input
            size). An image of another size is an error naming the file, its size and this
            one: faces are never resized silently (a resized photo is not an aligned face).
        skip_bad_images: decode every image once at start-up and drop (and count) the ones
            that fail; otherwise a bad image stops training with an error naming the file.
        seed: sampling seed (combined with the epoch and index).
    """

    def __init__(
        self,
        root: str,
        same_probability: float = 0.5,
        flip: bool = True,
        image_size: int = 112,
        skip_bad_images: bool = False,
        seed: int = 0,
    ) -> None:
        self.root = Path(root)
        self.identity_names, per_identity = scan_image_folder(self.root)
        if skip_bad_images:
            per_identity = self._drop_bad_images(per_identity)
        super().__init__([len(files) for files in per_identity], same_probability, flip, seed)
        self.paths = [path for files in per_identity for path in files]
        self.image_size = image_size
        self._check_first_image()

    def _check_first_image(self) -> None:
        """A folder of unaligned photos fails here, at once; only its first image is looked at
        (a large folder's headers take long to read): ``face`` checks every image it reads."""
        try:
            found = file_size(self.paths[0])
        except BadImageError:
            return  # named when it is read, or skipped with skip_bad_images
        if found != (self.image_size, self.image_size):
            message = unaligned_message(self.paths[0], found, self.image_size, self._fix())
            raise DataError(f"data.train: {message}")

    def _drop_bad_images(self, per_identity: list[list[Path]]) -> list[list[Path]]:
        kept, bad = [], []
        for files in per_identity:
            good = []
            for path in files:
                try:
                    read_rgb(path)
                    good.append(path)
                except BadImageError:
                    bad.append(path)
            if good:
                kept.append(good)
        self.skipped_images = bad
        if bad:
            log.warning(
                "skipped %d unreadable image(s) under %s, first: %s", len(bad), self.root, bad[0]
            )
        if len(kept) < 2:
            raise DataError(f"{self.root}: fewer than 2 identities have readable images")
        return kept

    def _fix(self) -> str:
        return (
            f"{self.root} must hold faces already aligned to {self.image_size}x{self.image_size} "
            "(MTCNN five points onto the model's template, as `xcos prepare` does for pair "
            "lists); if they are aligned faces of another size, set data.train.image_size to "
            "that size and use a model of that input size"
        )

    def face(self, index: int) -> np.ndarray:
        return read_face(self.paths[index], self.image_size, self._fix())
