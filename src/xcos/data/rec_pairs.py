"""Training pairs from an InsightFace RecordIO folder as downloaded (``train.rec`` and friends).

Faces are decoded either in the DataLoader's workers (``decode="workers"``, the default) or,
with ``decode="device"``, on the training device in batches: items then carry the encoded
JPEG bytes, ``collate`` keeps them as lists, and the trainer calls ``decode_batch`` on each
batch (``torchvision.io.decode_jpeg`` on the batch's list: nvJPEG on CUDA, libjpeg-turbo on a
CPU device), so a GPU job needs far fewer CPU cores to keep up. (torchvision 0.29 deprecates
its image decoders in favour of TorchCodec; ``decode_jpeg`` is still the batched nvJPEG call.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from torch.utils.data import default_collate
from torchvision.io import ImageReadMode, decode_jpeg

from xcos.data.image_folder import IdentityPairs
from xcos.data.recordio import RecordFile, decoder_reason
from xcos.errors import BadImageError, DataError, UnalignedImageError
from xcos.registry import DATASETS

#: Item keys of a face still encoded (``decode="device"``): bytes, flip flag, record key.
ENCODED, FLIP, RECORD = "encoded_", "flip_", "record_"


@DATASETS.register("rec_pairs")
class RecPairs(IdentityPairs):
    """Pairs (see ``IdentityPairs``) from an InsightFace RecordIO folder.

    The folder is read as downloaded: ``train.rec``, ``train.idx`` and ``property`` (MS1MV2's
    ``faces_emore/``, MS1MV3, Glint360K, WebFace, CASIA-WebFace), through
    ``xcos.data.recordio.RecordFile``; the class count comes from ``property``, checked
    against the labels. Items are those of ``image_folder_pairs``: ``image_a``, ``image_b``
    [3, S, S] normalised RGB, ``identity_a``, ``identity_b``, ``label``.

    Args:
        root: the RecordIO folder.
        same_probability: chance of a same-identity pair.
        flip: random horizontal flip of each image (augmentation).
        image_size: side of the stored faces (default: ``property``'s); they are never
            resized, so another size is an error.
        decode: ``"workers"``: the DataLoader's workers decode the faces; ``"device"``: items
            carry the encoded faces and the trainer decodes each batch on its device
            (``decode_batch``; nvJPEG on a CUDA device). Both give the same pixels within JPEG
            decoder tolerance (identical on a CPU device).
        seed: sampling seed (combined with the epoch and index).
    """

    def __init__(
        self,
        root: str,
        same_probability: float = 0.5,
        flip: bool = True,
        image_size: int | None = None,
        decode: Literal["workers", "device"] = "workers",
        seed: int = 0,
    ) -> None:
        self.file = RecordFile(root)
        if self.file.num_classes < 2:
            raise DataError(f"{root}: pairs need at least 2 identities, found 1")
        stored = self.file.image_shape
        if image_size is not None and stored is not None and stored != (image_size, image_size):
            raise DataError(
                f"data.train.image_size: {image_size}, but {self.file.folder / 'property'} says "
                f"the faces are {stored[1]}x{stored[0]}; faces are never resized: remove "
                "image_size or use a model of the faces' size"
            )
        self.record_keys = self.file.keys_by_class()
        counts = np.bincount(self.file.labels, minlength=self.file.num_classes)
        super().__init__(counts, same_probability, flip, seed)
        self.decode = decode
        # without property, the first face sets the size every other one must have
        self.image_size = image_size or (stored or self.file.image(self.key(0)).shape)[0]

    # ------------------------------------------------------------------ decoded in workers

    def face(self, index: int) -> np.ndarray:
        key = self.key(index)
        image = self.file.image(key)
        if image.shape[:2] != (self.image_size, self.image_size):
            raise UnalignedImageError(self._size_message(key, image.shape[:2]))
        return image

    def key(self, index: int) -> int:
        """The record key of image ``index`` (images numbered class by class)."""
        return int(self.record_keys[index])

    def _size_message(self, key: int, shape: tuple[int, ...]) -> str:
        """``shape``: (H, W) of the face found."""
        return (
            f"{self.file.where(key)}: a {shape[1]}x{shape[0]} face, expected {self.image_size}x"
            f"{self.image_size} (property, or data.train.image_size); faces are never resized"
        )

    # ------------------------------------------------------------------ decoded on the device

    def image_fields(self, index: int, flip: bool, side: str) -> dict[str, torch.Tensor]:
        if self.decode == "workers":
            return super().image_fields(index, flip, side)
        key = self.key(index)
        return {
            f"{ENCODED}{side}": torch.frombuffer(
                bytearray(self.file.payload(key)), dtype=torch.uint8
            ),
            f"{FLIP}{side}": torch.tensor(flip),
            f"{RECORD}{side}": torch.tensor(key),
        }

    @property
    def collate(self) -> Callable[[list[dict]], dict] | None:
        """The DataLoader's ``collate_fn``: None (torch's default) unless faces stay encoded."""
        return collate_encoded if self.decode == "device" else None

    def decode_batch(
        self, batch: dict[str, object], device: torch.device
    ) -> dict[str, torch.Tensor]:
        """Decode the encoded faces of a collated batch on ``device``, in one call per side:
        ``encoded_a`` (a list of uint8 byte tensors), ``flip_a``, ``record_a`` become
        ``image_a`` [B, 3, S, S] normalised on ``device`` (likewise ``b``). A batch without
        encoded faces is returned as it is."""
        for side in ("a", "b"):
            if f"{ENCODED}{side}" not in batch:
                continue
            encoded = batch.pop(f"{ENCODED}{side}")
            flips = batch.pop(f"{FLIP}{side}").to(device)
            keys = batch.pop(f"{RECORD}{side}").tolist()
            faces = self._decode_on(encoded, keys, device)
            faces = torch.where(flips.view(-1, 1, 1, 1), faces.flip(-1), faces)
            batch[f"image_{side}"] = normalise(faces)
        return batch

    def _decode_on(
        self, encoded: list[torch.Tensor], keys: list[int], device: torch.device
    ) -> torch.Tensor:
        """uint8 [B, 3, S, S] on ``device``; a bad or unaligned face is named by its key."""
        try:
            images = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:
            self._name_bad_face(encoded, keys, device)
            raise
        for image, key in zip(images, keys, strict=True):
            if tuple(image.shape[1:]) != (self.image_size, self.image_size):
                raise UnalignedImageError(self._size_message(key, tuple(image.shape[1:])))
        return torch.stack(images)

    def _name_bad_face(
        self, encoded: list[torch.Tensor], keys: list[int], device: torch.device
    ) -> None:
        """Decode the faces one by one to raise ``BadImageError`` naming the one that fails."""
        for data, key in zip(encoded, keys, strict=True):
            try:
                decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
            except RuntimeError as err:
                raise BadImageError(
                    f"{self.file.where(key)}: cannot decode its JPEG on {device} "
                    f'({decoder_reason(err)}); decode="device" reads JPEG only, '
                    'decode="workers" reads PNG too'
                ) from None


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 RGB [..., 3, H, W] -> float (x / 255 - 0.5) / 0.5, as ``to_tensor`` computes it."""
    return images.float().div_(127.5).sub_(1.0)


def collate_encoded(items: list[dict[str, torch.Tensor]]) -> dict[str, object]:
    """torch's collation, except that encoded faces (of different lengths) stay lists."""
    encoded = [key for key in items[0] if key.startswith(ENCODED)]
    batch = default_collate([{k: v for k, v in item.items() if k not in encoded} for item in items])
    for key in encoded:
        batch[key] = [item[key] for item in items]
    return batch
