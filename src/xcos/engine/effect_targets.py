"""Training pairs whose cell effects on the recognizer were measured (``data.effects``).

The faithful head is taught what the frozen recognizer really responds to: for a fixed set of
pairs of *training* identities, each grid cell's effect on the recognizer's cosine is measured
once by occlusion with the other face's cell (``xcos.explain.effects``), cached on disk, and
the ``effect_ranking`` loss asks the xCos difference map to share its mass over the cells as
those effects do. Two kinds of pairs:

- **natural**: (A, B) drawn as the training pairs are (same person or not);
- **self-swap**: (B, B*), B* being B with a random rectangle or feathered blob of another
  training identity's face pasted in, so the pasted cells are the only difference. Generic
  shapes anywhere on the face, never the facial regions that the yardsticks test.

``EffectPairs`` serves the usual random training pairs (no effects, ``effect_valid`` 0) and
then the measured pairs (``effect`` [g, g], ``effect_valid`` 1), so one epoch trains the score
on both and the map on the measured ones.
"""

from __future__ import annotations

import hashlib
import logging
import time

import numpy as np
import torch
from torch.utils.data import Dataset

from xcos.cache import cache_root
from xcos.checkpoints import read_checkpoint, write_checkpoint
from xcos.config import EffectSettings
from xcos.data.image_folder import IdentityPairs, split_key
from xcos.data.pasting import box_mask, ellipse_mask, paste
from xcos.engine.features import CachedFeaturePairs, WrappedPairs, backbone_digest
from xcos.errors import ConfigError
from xcos.explain.effects import cell_effects
from xcos.models.geometry import grid_edges, pixel_spans
from xcos.models.xcos_model import XCosModel
from xcos.progress import progress

log = logging.getLogger(__name__)

EFFECTS_VERSION = 1  # bump when the measurement rule or what is cached changes
CHUNK = 128  # pairs measured per call (bounds the faces held in memory)


def draw_pairs(dataset: IdentityPairs, settings: EffectSettings) -> dict[str, np.ndarray]:
    """The fixed pairs of ``dataset``: ``natural`` [P, 2] face indices; ``swap_face``,
    ``swap_donor`` [Q]; ``swap_box`` [Q, 4] (x0, y0, x1, y1 fractions); ``swap_blob`` [Q]
    (ellipse or not)."""
    rng = np.random.default_rng([settings.seed, EFFECTS_VERSION])
    anchors = rng.choice(len(dataset), settings.pairs, replace=settings.pairs > len(dataset))
    natural = np.array([[i, dataset.partner(int(i), rng)] for i in anchors], dtype=np.int64)
    faces = rng.choice(len(dataset), settings.swaps, replace=settings.swaps > len(dataset))
    donors = np.array([dataset.other_identity(int(i), rng) for i in faces], dtype=np.int64)
    sides = rng.uniform(*settings.side, size=(settings.swaps, 2))
    corners = rng.uniform(0.0, 1.0, size=(settings.swaps, 2)) * (1.0 - sides)
    boxes = np.concatenate([corners, corners + sides], axis=1)
    return {
        "natural": natural.reshape(-1, 2),
        "swap_face": faces.astype(np.int64),
        "swap_donor": donors,
        "swap_box": boxes.astype(np.float32),
        "swap_blob": rng.random(settings.swaps) < 0.5,
    }


def swap_mask(size: int, box: np.ndarray, blob: bool) -> np.ndarray:
    """[S, S] mask of a self-swap's shape: the box itself, or the feathered ellipse in it."""
    x0, y0, x1, y1 = (float(v) * size for v in box)
    if blob:
        centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
        return ellipse_mask(size, centre, ((x1 - x0) / 2, (y1 - y0) / 2))
    return box_mask(size, (round(x0), round(y0), round(x1), round(y1)))


def measure(
    model: XCosModel, dataset: IdentityPairs, drawn: dict[str, np.ndarray], device
) -> dict[str, torch.Tensor]:
    """Effects of the pairs drawn from ``dataset``, and the backbone outputs of the swapped
    faces."""
    backbone = model.backbone
    spans = pixel_spans(grid_edges(backbone))
    size = backbone.input_size
    pairs = len(drawn["natural"]) + len(drawn["swap_face"])
    with progress(pairs, "measured effects", "pair", log) as bar:
        natural, images = [], 0
        for start in range(0, len(drawn["natural"]), CHUNK):
            chunk = drawn["natural"][start : start + CHUNK]
            faces_a = torch.stack([dataset.load(int(i), False) for i in chunk[:, 0]])
            faces_b = torch.stack([dataset.load(int(j), False) for j in chunk[:, 1]])
            effects, _, used = cell_effects(backbone, faces_a, faces_b, spans)
            natural.append(effects)
            images += used
            bar.update(len(chunk))
        swapped_effects, outputs = [], {}
        for start in range(0, len(drawn["swap_face"]), CHUNK):
            rows = range(start, min(start + CHUNK, len(drawn["swap_face"])))
            faces = torch.stack([dataset.load(int(drawn["swap_face"][r]), False) for r in rows])
            swapped = torch.stack(
                [
                    paste(
                        face,
                        dataset.load(int(drawn["swap_donor"][r]), False),
                        swap_mask(size, drawn["swap_box"][r], bool(drawn["swap_blob"][r])),
                    )
                    for face, r in zip(faces, rows, strict=True)
                ]
            )
            effects, _, used = cell_effects(backbone, faces, swapped, spans)
            swapped_effects.append(effects)
            images += used + len(swapped)  # and the swapped faces' outputs below
            with torch.no_grad():
                for key, value in model.backbone_outputs(swapped.to(device)).items():
                    dtype = torch.float16 if key == "features" else torch.float32
                    outputs.setdefault(key, []).append(value.to("cpu", dtype))
            bar.update(len(rows))
    grid = backbone.grid_size
    empty = np.zeros((0, grid, grid), dtype=np.float32)
    return {
        **{key: torch.from_numpy(np.asarray(value)) for key, value in drawn.items()},
        "natural_effect": torch.from_numpy(np.concatenate(natural) if natural else empty),
        "swap_effect": torch.from_numpy(
            np.concatenate(swapped_effects) if swapped_effects else empty
        ),
        **{f"swap_{key}": torch.cat(values) for key, values in outputs.items()},
        "images": torch.tensor(images),
    }


def measured_effects(
    model: XCosModel, dataset: IdentityPairs, settings: EffectSettings, device
) -> dict[str, torch.Tensor]:
    """``measure`` of the pairs ``settings`` draws from ``dataset``, cached on disk under a
    key of the recognizer, the pairs, the rule and the pixels of every face they use."""
    drawn = draw_pairs(dataset, settings)
    digest = hashlib.sha256(f"{backbone_digest(model)}:{settings}:{EFFECTS_VERSION}".encode())
    for value in drawn.values():
        digest.update(np.ascontiguousarray(value).tobytes())
    used = np.unique(
        np.concatenate([drawn["natural"].ravel(), drawn["swap_face"], drawn["swap_donor"]])
    )
    for index in used:  # the faces themselves: a changed image is measured again
        digest.update(np.ascontiguousarray(dataset.face(int(index))).tobytes())
    path = cache_root() / "effects" / f"{digest.hexdigest()[:24]}.pt"
    if path.is_file():
        log.info("measured cell effects from the cache %s", path)
        return read_checkpoint(path, "effect cache entry")
    started = time.perf_counter()
    measured = measure(model, dataset, drawn, device)
    log.info(
        "measured the cell effects of %d natural and %d self-swap pairs: %d backbone images "
        "in %.0f s (once; cached in %s)",
        len(drawn["natural"]),
        len(drawn["swap_face"]),
        int(measured["images"]),
        time.perf_counter() - started,
        path,
    )
    write_checkpoint(measured, path)  # atomic: never a half-written cache entry
    return measured


class EffectPairs(WrappedPairs):
    """The random pairs of ``pairs`` (``effect_valid`` 0), then the measured pairs of
    ``effects`` (``measured_effects``): natural ones, then self-swaps. Keys as the wrapped
    data set's (``(epoch, index)`` or an index)."""

    def __init__(self, pairs: CachedFeaturePairs, effects: dict[str, torch.Tensor]) -> None:
        self.pairs, self.effects = pairs, effects
        self.natural = len(effects["natural"])
        self.swaps = len(effects["swap_face"])
        grid = effects["natural_effect"].shape[-1] or effects["swap_effect"].shape[-1]
        self.no_effect = torch.zeros(grid, grid)

    def __len__(self) -> int:
        return len(self.pairs) + self.natural + self.swaps

    def _face(self, index: int, side: str) -> dict[str, torch.Tensor]:
        return {
            **self.pairs.face_outputs(index, False, side),
            f"identity_{side}": torch.tensor(int(self.pairs.pairs.labels[index])),
        }

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        index = split_key(key)[1]
        if index < len(self.pairs):
            return {
                **self.pairs[key],
                "effect": self.no_effect,
                "effect_valid": torch.tensor(0.0),
            }
        index -= len(self.pairs)
        if index < self.natural:
            i, j = (int(v) for v in self.effects["natural"][index])
            item = {**self._face(i, "a"), **self._face(j, "b")}
            effect = self.effects["natural_effect"][index]
        else:
            index -= self.natural
            face = int(self.effects["swap_face"][index])
            item = self._face(face, "a")
            item["identity_b"] = item["identity_a"]
            for key_ in self.pairs.keys:
                item[f"{key_}_b"] = self.effects[f"swap_{key_}"][index].float()
            effect = self.effects["swap_effect"][index]
        item["label"] = torch.tensor(int(item["identity_a"] == item["identity_b"]))
        return {**item, "effect": effect.float(), "effect_valid": torch.tensor(1.0)}


def restrict(
    measured: dict[str, torch.Tensor], source: IdentityPairs, dataset: IdentityPairs
) -> dict[str, torch.Tensor]:
    """The measured pairs of ``source`` whose faces and donors are all faces of ``dataset``
    (both on one face store), renumbered to ``dataset``'s indices."""
    position = {int(s): i for i, s in enumerate(dataset.store_index)}
    local = torch.tensor([position.get(int(s), -1) for s in source.store_index])
    natural = local[measured["natural"]]
    keep_natural = (natural >= 0).all(dim=1)
    face, donor = local[measured["swap_face"]], local[measured["swap_donor"]]
    keep_swap = (face >= 0) & (donor >= 0)
    kept = {key: value[keep_swap] for key, value in measured.items() if key.startswith("swap_")}
    kept.update(swap_face=face[keep_swap], swap_donor=donor[keep_swap])
    kept.update(
        natural=natural[keep_natural],
        natural_effect=measured["natural_effect"][keep_natural],
        images=measured["images"],
    )
    return kept


def with_effect_targets(
    model: XCosModel, pairs: Dataset, settings: EffectSettings, device
) -> EffectPairs:
    """Add the measured pairs of ``settings`` to cached training pairs. A data set that can
    name everyone of its source (``everyone()``, LFW people files) has the pairs drawn and
    measured once over everyone, and keeps those of its own people: the folds of the LFW
    protocol share one measurement."""
    if not isinstance(pairs, CachedFeaturePairs) or pairs.perturbed is not None:
        raise ConfigError(
            "data.effects needs cached backbone outputs (model.freeze_backbone and "
            "data.cache_features) and no data.perturb"
        )
    dataset = pairs.pairs
    if not hasattr(dataset, "everyone"):
        return EffectPairs(pairs, measured_effects(model, dataset, settings, device))
    source = dataset.everyone()
    measured = restrict(measured_effects(model, source, settings, device), source, dataset)
    log.info(
        "%d natural and %d self-swap measured pairs are of this data set's people",
        len(measured["natural"]),
        len(measured["swap_face"]),
    )
    return EffectPairs(pairs, measured)
