"""Data generators (``data.synthetic``): registered in ``xcos.registry.GENERATORS``."""

from __future__ import annotations

from xcos.registry import GENERATORS

__all__ = ["synthfaces"]


@GENERATORS.register("synthfaces")
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
