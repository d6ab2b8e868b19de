"""Cached outputs of a frozen backbone, so an xCos head trains and scores without it.

When the recognizer is frozen (``model.freeze_backbone``), its spatial maps and embeddings
never change: they are computed once per face (and once per mirrored face, for flip
augmentation), kept in memory, and cached on disk under a key that hashes the faces and the
backbone's weights. Head training then runs at the speed of the head alone.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from xcos.cache import cache_root
from xcos.checkpoints import read_checkpoint, write_checkpoint
from xcos.data.image_folder import IdentityPairs, split_key
from xcos.data.images import to_image, to_tensor
from xcos.errors import ConfigError
from xcos.models.xcos_model import XCosModel
from xcos.progress import progress

log = logging.getLogger(__name__)

FEATURES_VERSION = 1  # bump when what is cached changes

FaceReader = Callable[[int], np.ndarray]


def backbone_digest(model: XCosModel) -> str:
    """sha256 of the backbone's kind, settings and weights, and of how its outputs are used."""
    backbone = model.backbone
    described = (
        f"{type(backbone).__name__}:{backbone.extra_repr()}:{backbone.out_channels}:"
        f"{getattr(backbone, 'grid_size', None)}:{model.cos_source}:{FEATURES_VERSION}"
    )
    digest = hashlib.sha256(described.encode())
    for name, tensor in model.backbone.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@torch.no_grad()
def compute_backbone_outputs(
    model: XCosModel,
    face: FaceReader,
    count: int,
    device: torch.device,
    flip: bool = True,
    batch_size: int = 64,
) -> dict[str, torch.Tensor]:
    """The backbone's ``features`` [N, C, h, w] (float16) and ``embedding`` [N, D] (float32,
    when the model scores embeddings) of faces ``face(0..count-1)`` (RGB uint8 [S, S, 3]);
    with ``flip``, also ``features_flipped`` / ``embedding_flipped`` of the mirrored faces."""
    was_training = model.training
    model.eval()
    outputs: dict[str, torch.Tensor] = {}
    log.info("computing the backbone outputs of %d faces", count)
    try:
        with progress(count, "backbone outputs", "face", log) as bar:
            for start in range(0, count, batch_size):
                indices = range(start, min(start + batch_size, count))
                images = torch.stack([to_tensor(face(i)) for i in indices]).to(device)
                images = images.contiguous(memory_format=torch.channels_last)  # faster convs
                variants = {"": images, "_flipped": images.flip(3)} if flip else {"": images}
                for suffix, batch in variants.items():
                    for key, value in model.backbone_outputs(batch).items():
                        dtype = torch.float16 if key == "features" else torch.float32
                        if key + suffix not in outputs:  # filled in place: no second copy
                            outputs[key + suffix] = torch.empty(
                                (count, *value.shape[1:]), dtype=dtype
                            )
                        outputs[key + suffix][start : start + len(indices)] = value.to("cpu", dtype)
                bar.update(len(indices))
    finally:
        model.train(was_training)
    return outputs


def cached_backbone_outputs(
    model: XCosModel,
    face: FaceReader,
    count: int,
    faces_key: str | None,
    device: torch.device,
    flip: bool = True,
    batch_size: int = 64,
    cache_dir: str | Path | None = None,
) -> dict[str, torch.Tensor]:
    """``compute_backbone_outputs``, read from the disk cache when ``faces_key`` (a digest of
    the faces' contents) is given and the same faces met the same backbone before."""
    if faces_key is None:
        return compute_backbone_outputs(model, face, count, device, flip, batch_size)
    cache = cache_root(cache_dir)
    key = hashlib.sha256(f"{faces_key}:{backbone_digest(model)}:{flip}".encode()).hexdigest()
    path = cache / "features" / f"{key[:24]}.pt"
    if path.is_file():
        log.info("backbone outputs of %d faces from the cache %s", count, path)
        return read_checkpoint(path, "feature cache entry")
    outputs = compute_backbone_outputs(model, face, count, device, flip, batch_size)
    write_checkpoint(outputs, path)  # atomic: never a half-written cache entry
    return outputs


class WrappedPairs(Dataset):
    """A data set serving the pairs of another (``pairs``): its identities and epochs."""

    pairs: Dataset

    @property
    def num_classes(self) -> int:
        return self.pairs.num_classes

    def set_epoch(self, epoch: int) -> None:
        self.pairs.set_epoch(epoch)


class CachedFeaturePairs(WrappedPairs):
    """The pairs of an ``IdentityPairs`` data set, carrying the frozen backbone's cached
    outputs (``features_a/b``, ``embedding_a/b``) instead of images. Same sampling, same
    flips (a flipped face gets the outputs of its mirror image). With ``perturbed`` (the
    outputs of every face's B* variants, ``perturbed_outputs``), items carry B* too."""

    def __init__(
        self,
        pairs: IdentityPairs,
        outputs: dict[str, torch.Tensor],
        store_index: np.ndarray | None = None,
        perturbed: dict[str, torch.Tensor] | None = None,
    ) -> None:
        if pairs.flip and "features_flipped" not in outputs:
            raise ValueError("the data set flips faces but the cache holds no mirrored outputs")
        self.pairs, self.outputs, self.store_index = pairs, outputs, store_index
        self.perturbed = perturbed
        self.keys = [key for key in ("features", "embedding") if key in outputs]

    def __len__(self) -> int:
        return len(self.pairs)

    def face_outputs(self, index: int, flipped: bool, side: str) -> dict[str, torch.Tensor]:
        """The cached outputs of face ``index`` (mirrored or not) as ``<key>_<side>``."""
        suffix = "_flipped" if flipped else ""
        if self.store_index is not None:  # the outputs cover a store the data set indexes
            index = int(self.store_index[index])
        return {f"{k}_{side}": self.outputs[k + suffix][index].float() for k in self.keys}

    def _perturbed_outputs(self, index: int, variant: int, flipped: bool) -> dict:
        suffix = "_flipped" if flipped else ""
        row = index * self.pairs.perturb.variants + variant
        return {f"{k}_perturbed": self.perturbed[k + suffix][row].float() for k in self.keys}

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        perturbed = self._perturbed_outputs if self.perturbed is not None else None
        return self.pairs.pair_item(key, self.face_outputs, perturbed)

    def __getitems__(self, keys: list) -> dict[str, torch.Tensor]:
        """A whole batch, collated (the DataLoader calls this instead of one ``__getitem__``
        per key): the same pairs as item by item, but the cached outputs of all faces are
        gathered in one indexing per key, where per-item dicts and copies cost about as
        much as a small head's training step. Batches with B* go item by item."""
        if self.perturbed is not None:
            return default_collate([self[key] for key in keys])
        anchors, partners, flips_a, flips_b = [], [], [], []
        for key in keys:
            epoch, index = split_key(key)
            other, flip_a, flip_b = self.pairs.sample(index, epoch)
            anchors.append(index)
            partners.append(other)
            flips_a.append(flip_a)
            flips_b.append(flip_b)
        labels = torch.as_tensor(np.asarray(self.pairs.labels), dtype=torch.int64)
        label_a, label_b = labels[anchors], labels[partners]
        return {
            **self._gathered_outputs(anchors, flips_a, "a"),
            **self._gathered_outputs(partners, flips_b, "b"),
            "identity_a": label_a,
            "identity_b": label_b,
            "label": (label_a == label_b).long(),
        }

    def _gathered_outputs(
        self, indices: list[int], flips: list[bool], side: str
    ) -> dict[str, torch.Tensor]:
        """``face_outputs`` of many faces at once: ``<key>_<side>`` [N, ...] float32."""
        rows = np.asarray(indices, dtype=np.int64)
        if self.store_index is not None:
            rows = np.asarray(self.store_index, dtype=np.int64)[rows]
        rows_t = torch.from_numpy(rows)
        flipped = torch.as_tensor(flips, dtype=torch.bool)
        gathered = {}
        for key in self.keys:
            values = self.outputs[key][rows_t]
            if flipped.any():
                mirrored = self.outputs[f"{key}_flipped"][rows_t]
                mask = flipped.view(-1, *[1] * (values.ndim - 1))
                values = torch.where(mask, mirrored, values)
            gathered[f"{key}_{side}"] = values.float()
        return gathered

    @property
    def collate(self) -> Callable[[Any], dict[str, torch.Tensor]]:
        """The DataLoader's ``collate_fn``: batches come collated from ``__getitems__``."""
        return collated_batch


def collated_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A batch that ``__getitems__`` has already collated, passed through."""
    return batch


def perturbed_outputs(
    model: XCosModel, dataset: IdentityPairs, device: torch.device, batch_size: int = 64
) -> dict[str, torch.Tensor]:
    """The frozen backbone's outputs of every face's B* variants (``data.perturb``), row
    ``index * variants + variant``; cached on disk when the data set's faces are keyed."""
    settings = dataset.perturb
    count = len(dataset) * settings.variants

    def face(row: int) -> np.ndarray:
        index, variant = divmod(row, settings.variants)
        return to_image(dataset.perturbed_face(index, variant, flip=False))

    store = getattr(dataset, "store", None)
    key = None
    if store is not None:
        digest = hashlib.sha256(f"{store.cache_key}:{settings}:perturbed".encode())
        digest.update(np.asarray(getattr(dataset, "store_index", [])).tobytes())
        digest.update(np.asarray(dataset.labels).tobytes())
        key = digest.hexdigest()
    log.info("backbone outputs of %d perturbed faces (data.perturb)", count)
    return cached_backbone_outputs(model, face, count, key, device, dataset.flip, batch_size)


def with_cached_features(
    model: XCosModel, dataset: Dataset, device: torch.device, batch_size: int = 64
) -> CachedFeaturePairs:
    """Wrap a training data set so that a frozen backbone runs once per face, not per step."""
    if not isinstance(dataset, IdentityPairs):
        raise ConfigError(
            f"data.cache_features: {type(dataset).__name__} is not an identity-pair data set; "
            "set data.cache_features to false"
        )
    store = getattr(dataset, "store", None)  # faces shared by several data sets, keyed
    if store is not None:
        face, count, key = store.face, len(store), store.cache_key
    else:
        face, count, key = dataset.face, len(dataset), None
    outputs = cached_backbone_outputs(
        model, face, count, key, device, flip=dataset.flip, batch_size=batch_size
    )
    perturbed = perturbed_outputs(model, dataset, device, batch_size) if dataset.perturb else None
    return CachedFeaturePairs(dataset, outputs, getattr(dataset, "store_index", None), perturbed)
