"""Importing this module registers every built-in component in the registries."""

import torch

import xcos.data.image_folder
import xcos.data.insightface_bin
import xcos.data.lfw
import xcos.data.lfw_people
import xcos.data.pack
import xcos.data.pair_sets
import xcos.data.shards
import xcos.evaluation.roc
import xcos.evaluation.verification
import xcos.losses
import xcos.models.backbones
import xcos.models.margin
import xcos.models.targets
import xcos.models.xcos_head  # noqa: F401
from xcos.registry import GENERATORS, OPTIMIZERS, SCHEDULERS


def _register_torch() -> None:
    for name in ("SGD", "Adam", "AdamW", "RMSprop"):
        OPTIMIZERS.add(name, getattr(torch.optim, name))
    for name in ("StepLR", "MultiStepLR", "CosineAnnealingLR", "ExponentialLR", "OneCycleLR"):
        SCHEDULERS.add(name, getattr(torch.optim.lr_scheduler, name))


def synthfaces(
    root: str,
    identities: dict[str, int] | None = None,
    images_per_identity: int = 12,
    pairs_per_split: int = 600,
    one_region_pairs: int = 200,
    seed: int = 0,
    image_size: int = 112,
) -> dict:
    """Generate SynthFaces into ``root`` unless the same set is already there."""
    from xcos.data.synthfaces import DEFAULT_IDENTITIES, ensure_synthfaces

    return ensure_synthfaces(
        root,
        identities=identities or dict(DEFAULT_IDENTITIES),
        images_per_identity=images_per_identity,
        pairs_per_split=pairs_per_split,
        one_region_pairs=one_region_pairs,
        seed=seed,
        image_size=image_size,
    )


def _register_generators() -> None:
    GENERATORS.add("synthfaces", synthfaces)


if "SGD" not in OPTIMIZERS:
    _register_torch()
    _register_generators()
