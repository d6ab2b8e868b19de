"""A pair set from its spec: a path (reader chosen by its extension) or a config's object
with a ``type``, aligned through the pack cache when the spec asks for it (or, for LFW lists,
unless it says ``"align": false``).

This sits above the readers, the packs (``xcos.data.pack``) and their preparation
(``xcos.data.prepare``), which all use ``PairSet`` (``xcos.data.pair_sets``) without needing
this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from xcos.data.pack import read_pack
from xcos.data.pair_sets import LFW_ALIGNMENT, PairSet, lfw_alignment
from xcos.data.prepare import cached_pack
from xcos.errors import DataError
from xcos.registry import PAIR_SETS

# Readers whose images are never aligned crops (LFW ships 250x250 deep-funneled photos): their
# images are detected, aligned and cached as a pack unless the spec says "align": false.
ALIGNED_BY_DEFAULT = {"lfw"}


def load_pair_set(spec: str | dict[str, Any], path: str = "pair_sets") -> PairSet:
    """Read a pair set from a path (reader chosen by extension) or a dict with a ``type``.

    With ``align`` (default for LFW lists only), the images are aligned through the pack
    cache. Otherwise they are used as they are, so they must already be aligned faces of the
    model's input size: the evaluator checks that (``PairSet.check_image_size``) and refuses
    anything else, naming the ``xcos prepare`` command that aligns the set.
    """
    location = spec if isinstance(spec, str) else spec.get("path")
    if isinstance(location, str) and not Path(location).exists():
        raise DataError(
            f"{path}: {location!r} does not exist. Set {path} to a verification pair set: a CSV "
            "with header path_a,path_b,label[,fold] (paths relative to the CSV's folder), an "
            "LFW pairs .txt, an InsightFace .bin, or a <name>.pack folder from `xcos prepare`"
        )
    if isinstance(spec, str):
        suffix = Path(spec).suffix.lower()
        readers = {".csv": "csv", ".txt": "lfw", ".bin": "insightface_bin", ".pack": "pack"}
        if suffix not in readers:
            raise DataError(
                f"{path}: cannot tell the format of {spec!r}; known extensions: "
                f"{', '.join(readers)} (or give an object with a 'type': "
                f"{', '.join(PAIR_SETS.names())})"
            )
        spec = {"type": readers[suffix], "path": spec}
    align = spec.get("align", spec["type"] in ALIGNED_BY_DEFAULT)
    if spec["type"] == "lfw" and isinstance(align, dict):
        align = lfw_alignment(align)  # LFW's settings, unless the spec says otherwise
    pair_set = PAIR_SETS.build(spec, path, own_keys=("align",))
    if align and not isinstance(pair_set.images, np.ndarray):
        pair_set = aligned_through_cache(pair_set, align, [Path(spec["path"])], f"{path}.align")
    if isinstance(spec.get("path"), str):
        pair_set.source = spec["path"]
    return pair_set


def aligned_through_cache(
    pair_set: PairSet, align: bool | dict[str, Any], sources: list[Path], path: str
) -> PairSet:
    """The pair set with every image aligned (MTCNN, or dlib with ``"aligner": "dlib"``),
    from the pack cache when possible."""
    from xcos.data.aligners import make_aligner  # MTCNN's torch modules, only when aligning

    settings = dict(LFW_ALIGNMENT) if align is True else dict(align)
    folder = cached_pack(pair_set, make_aligner(settings, path), sources)
    return read_pack(str(folder), pair_set.name)
