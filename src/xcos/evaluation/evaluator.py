"""Evaluate an xCos model on verification pair sets: each distinct image is embedded once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from xcos.data.images import to_tensor
from xcos.data.pair_sets import PairSet
from xcos.distributed import Distributed
from xcos.evaluation.compiled import embedding_forward
from xcos.models.xcos_model import descriptors_to, select_descriptors, split_descriptors
from xcos.registry import METRICS

#: The scores of a compared pair, [N] per batch of pairs.
SCORE_KEYS = ("xcos", "cos")
#: Scores a model gives only in some settings: ``head_xcos``, a calibrated head's own weighted
#: sum (``model.calibrate``, where ``xcos`` is the recognizer's cosine).
OPTIONAL_SCORE_KEYS = ("head_xcos",)
#: The maps kept for explanations: the patch cosine, the attention and the difference
#: (attention x (1 - patch cosine): where the two faces differ), each [h, w] per pair.
MAP_KEYS = ("patch_cosine", "attention", "difference")


class _Images(Dataset):
    def __init__(self, pair_set: PairSet, image_size: int) -> None:
        self.pair_set, self.image_size = pair_set, image_size

    def __len__(self) -> int:
        return len(self.pair_set.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return to_tensor(self.pair_set.image(index, self.image_size))


@dataclass
class PairSetResult:
    """Scores per pair (``scores[key]`` [N]) and metrics per score key."""

    pair_set: PairSet
    scores: dict[str, np.ndarray]
    metrics: dict[str, dict[str, Any]]


@torch.no_grad()
def embed_images(
    model: torch.nn.Module,
    pair_set: PairSet,
    device: torch.device,
    batch_size: int = 64,
    flip: bool = False,
    autocast: Callable[[], AbstractContextManager] | None = None,
    num_workers: int = 0,
    image_size: int | None = None,
    compiled: bool = False,
) -> dict[str, torch.Tensor]:
    """Descriptors (float32, CPU) of the distinct images of ``pair_set``: ``grid``
    [M, c, h, w] (and ``embedding`` [M, D] for a model scoring ``cos`` on embeddings).

    With ``flip``, the features of the horizontally flipped image are flipped back along the
    width axis and added, so each cell still describes the same part of the face.

    Every image must already be an aligned face of the model's input size: anything else is
    refused up front (``UnalignedImageError`` naming the file and the ``xcos prepare`` command
    that aligns the set), never resized into a silently wrong score.

    ``compiled``: embed through ``torch.compile`` with the weights frozen into the graph
    (``xcos.evaluation.compiled``): faster where many images are embedded, after a one-time
    compile.
    """
    size = image_size or model.input_size
    pair_set.check_image_size(size, model.face_template)
    embed = embedding_forward(model, compiled, batch_size)
    chunks: dict[str, list[torch.Tensor]] = {}
    for images in _batches(pair_set, size, batch_size, num_workers):
        # channels-last: convolutions on CPU (oneDNN) and on CUDA tensor cores run faster in it
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with autocast() if autocast else nullcontext():
            descriptors = descriptors_to(embed(images), device)  # float32 before the flip sum
            if flip:
                descriptors = add_flipped(
                    descriptors, descriptors_to(embed(images.flip(3)), device)
                )
        for key, value in descriptors_to(descriptors, "cpu").items():
            chunks.setdefault(key, []).append(value)
    return {key: torch.cat(values) for key, values in chunks.items()}


@torch.no_grad()
def describe_outputs(
    model: torch.nn.Module,
    outputs: dict[str, torch.Tensor],
    device: torch.device,
    flip: bool = False,
    batch_size: int = 1024,
) -> dict[str, torch.Tensor]:
    """Like ``embed_images``, from a frozen backbone's cached outputs (``xcos.engine.features``)
    instead of images: only the head runs."""
    keys = [key for key in ("features", "embedding") if key in outputs]
    count = len(outputs["features"])
    chunks: dict[str, list[torch.Tensor]] = {}
    for start in range(0, count, batch_size):
        window = slice(start, start + batch_size)
        descriptors = descriptors_to(
            model.describe(descriptors_to({k: outputs[k][window] for k in keys}, device)), device
        )
        if flip:
            mirrored = descriptors_to({k: outputs[f"{k}_flipped"][window] for k in keys}, device)
            descriptors = add_flipped(descriptors, descriptors_to(model.describe(mirrored), device))
        for key, value in descriptors_to(descriptors, "cpu").items():
            chunks.setdefault(key, []).append(value)
    return {key: torch.cat(values) for key, values in chunks.items()}


def add_flipped(
    descriptors: dict[str, torch.Tensor], flipped: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Flip test-time augmentation: grids flipped back along the width axis, then summed."""
    return {
        key: value + (flipped[key].flip(3) if value.ndim == 4 else flipped[key])
        for key, value in descriptors.items()
    }


def _batches(pair_set: PairSet, size: int, batch_size: int, num_workers: int):
    """Normalised image batches [B, 3, S, S]; faces already in an array (a pack) are sliced
    directly, files are decoded by a DataLoader."""
    faces = pair_set.images
    if isinstance(faces, np.ndarray) and faces.shape[-1] == size:
        for start in range(0, len(faces), batch_size):
            chunk = torch.from_numpy(np.array(faces[start : start + batch_size]))  # writable copy
            yield chunk.float().div_(127.5).sub_(1.0)
        return
    loader = DataLoader(_Images(pair_set, size), batch_size=batch_size, num_workers=num_workers)
    yield from loader


@torch.no_grad()
def compare_pairs(
    model: torch.nn.Module,
    descriptors: dict[str, torch.Tensor],
    pairs: np.ndarray,
    device: torch.device,
    batch_size: int = 256,
    keep_maps: bool = False,
) -> dict[str, np.ndarray]:
    """Scores [N] of every pair (and, with ``keep_maps``, the ``MAP_KEYS`` maps [N, h, w])."""
    results: dict[str, list[np.ndarray]] = {}
    keys = (*SCORE_KEYS, *MAP_KEYS) if keep_maps else SCORE_KEYS
    for start in range(0, len(pairs), batch_size):
        chunk = torch.as_tensor(pairs[start : start + batch_size])
        descriptors_a = descriptors_to(select_descriptors(descriptors, chunk[:, 0]), device)
        descriptors_b = descriptors_to(select_descriptors(descriptors, chunk[:, 1]), device)
        out = model.compare(descriptors_a, descriptors_b)
        for key in (*keys, *(k for k in OPTIONAL_SCORE_KEYS if k in out)):
            results.setdefault(key, []).append(out[key].float().cpu().numpy())
    return {key: np.concatenate(value) for key, value in results.items()}


def score_pair_set(
    model: torch.nn.Module,
    pair_set: PairSet,
    device: torch.device,
    batch_size: int = 64,
    flip: bool = False,
    autocast: Callable[[], AbstractContextManager] | None = None,
    num_workers: int = 0,
    backbone_outputs: dict[str, torch.Tensor] | None = None,
    compiled: bool = False,
) -> dict[str, np.ndarray]:
    """``xcos`` and ``cos`` scores [N] of every pair of ``pair_set`` (model in eval mode)."""
    if len(pair_set) == 0:
        return {key: np.empty(0, dtype=np.float32) for key in SCORE_KEYS}
    was_training = model.training
    model.eval()
    try:
        if backbone_outputs is not None:
            descriptors = describe_outputs(model, backbone_outputs, device, flip)
        else:
            descriptors = embed_images(
                model, pair_set, device, batch_size, flip, autocast, num_workers, compiled=compiled
            )
        return compare_pairs(model, descriptors, pair_set.pairs, device)
    finally:
        model.train(was_training)


def score_sharded(
    dist: Distributed,
    model: torch.nn.Module,
    pair_set: PairSet,
    device: torch.device,
    backbone_outputs: dict[str, torch.Tensor] | None = None,
    **settings: Any,
) -> dict[str, np.ndarray]:
    """``score_pair_set`` split over the processes of a distributed job: each scores a
    contiguous block of pairs (embedding only the images those pairs use) and every process
    gets all the scores back in the original order. Every rank first takes rank 0's buffers,
    so all score the same model."""
    if not dist.enabled:
        return score_pair_set(
            model, pair_set, device, backbone_outputs=backbone_outputs, **settings
        )
    dist.share_buffers(model)
    block = np.array_split(np.arange(len(pair_set)), dist.world_size)[dist.rank]
    part, used = pair_set.select(block)
    if backbone_outputs is not None:
        backbone_outputs = {key: value[used] for key, value in backbone_outputs.items()}
    scores = score_pair_set(model, part, device, backbone_outputs=backbone_outputs, **settings)
    return assemble_scores(dist.gather((block, scores)), len(pair_set))


def assemble_scores(
    parts: Sequence[tuple[np.ndarray, dict[str, np.ndarray]]], count: int
) -> dict[str, np.ndarray]:
    """Scores of ``count`` pairs from (pair indices, scores) blocks; every pair must come
    exactly once, or the metric would silently count some pairs twice or not at all."""
    indices = np.concatenate([np.asarray(block, dtype=np.int64) for block, _ in parts])
    seen = np.bincount(indices, minlength=count)
    if len(seen) != count or not (seen == 1).all():
        missing, repeated = np.flatnonzero(seen == 0), np.flatnonzero(seen > 1)
        raise RuntimeError(
            f"sharded scores cover {len(indices)} pair slots for {count} pairs: "
            f"{len(missing)} missing (first {missing[:5].tolist()}), {len(repeated)} repeated "
            f"(first {repeated[:5].tolist()}), {max(len(seen) - count, 0)} out of range"
        )
    order = np.argsort(indices)
    return {key: np.concatenate([scores[key] for _, scores in parts])[order] for key in parts[0][1]}


def evaluate_pair_set(
    model: torch.nn.Module,
    pair_set: PairSet,
    device: torch.device,
    metric_cfgs: Sequence[dict[str, Any]] = ({"type": "verification_accuracy"}, {"type": "roc"}),
    batch_size: int = 64,
    flip: bool = False,
    autocast: Callable[[], AbstractContextManager] | None = None,
    num_workers: int = 0,
    backbone_outputs: dict[str, torch.Tensor] | None = None,
    dist: Distributed | None = None,
    compiled: bool = False,
) -> PairSetResult:
    """Embed, compare and score one pair set with every metric for every score key.

    ``backbone_outputs``: a frozen backbone's cached outputs for the set's distinct images
    (see ``xcos.engine.features``); then only the head runs. ``dist``: a distributed job
    shares the pairs out and gathers the scores, so the metrics see every pair once.
    ``compiled``: see ``embed_images``.
    """
    scores = score_sharded(
        dist or Distributed(),
        model,
        pair_set,
        device,
        backbone_outputs,
        batch_size=batch_size,
        flip=flip,
        autocast=autocast,
        num_workers=num_workers,
        compiled=compiled,
    )
    metrics: dict[str, dict[str, Any]] = {}
    for key in (k for k in (*SCORE_KEYS, *OPTIONAL_SCORE_KEYS) if k in scores):
        metrics[key] = {}
        for index, cfg in enumerate(metric_cfgs):
            metric = METRICS.build(cfg, f"metrics.{index}")
            metric.update(scores[key], pair_set.labels, pair_set.folds)
            metrics[key].update(metric.compute())
    return PairSetResult(pair_set, scores, metrics)


def pick_examples(pair_set: PairSet, count: int) -> list[int]:
    """Indices of up to ``count`` pairs, same and different pairs alternating."""
    same = np.flatnonzero(pair_set.labels == 1)
    different = np.flatnonzero(pair_set.labels == 0)
    picked = [int(i) for pair in zip(same, different, strict=False) for i in pair]
    return picked[:count]


def compare_images(
    model: torch.nn.Module, images_a: torch.Tensor, images_b: torch.Tensor
) -> dict[str, torch.Tensor]:
    """``model.compare`` of normalised faces [N, 3, S, S] x [N, 3, S, S], both embedded in one
    backbone pass: the one way xcos compares two batches of face images (evaluation, the
    Verifier, the explanation baselines and the benchmarks). Differentiable: callers that
    need no gradients wrap it in ``torch.no_grad()``."""
    descriptors_a, descriptors_b = split_descriptors(model.embed(torch.cat([images_a, images_b])))
    return model.compare(descriptors_a, descriptors_b)


@torch.no_grad()
def compare_faces(
    model: torch.nn.Module, faces: Sequence[np.ndarray], device: torch.device
) -> dict[str, np.ndarray]:
    """``compare_images`` of RGB uint8 faces [S, S, 3] given as A, B, A, B, ... in one
    embedding pass: ``SCORE_KEYS`` [N] and ``MAP_KEYS`` [N, h, w] as float32 numpy arrays
    (what a Verifier's scorer and an ``Explanation`` read)."""
    batch = torch.stack([to_tensor(face) for face in faces]).to(device)
    compared = compare_images(model, batch[0::2], batch[1::2])
    return {key: compared[key].float().cpu().numpy() for key in SCORE_KEYS + MAP_KEYS}
