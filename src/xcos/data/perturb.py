"""Perturbed partner faces for training faithful explanations (``data.perturb``).

Each training pair (A, B) also carries B*, face B with one random rectangle changed:

- **pasted** (share ``paste``): the rectangle comes from a face of another identity, shifted to
  B's mean colour there (``xcos.data.pasting.paste``), so what differs is that person's
  shape and texture. The ``locality`` loss asks the patch cosine of B against B* to drop on the
  pasted cells and to stay at 1 on the untouched ones: a cell should describe its own pixels.
- **covered**: the rectangle is a flat colour (an occluder: nothing to compare there). The
  ``mse`` loss with ``where: perturb_cover`` asks xCos(A, B*) to stay at the clean pair's
  target, which only the attention can do, by weighting the covered cells less.

Rectangles are generic (random sides, from ``side[0]`` to ``side[1]`` of the face, anywhere
inside it), never facial regions: the regions are what the faithfulness games test.

Batch keys added: ``image_perturbed`` [3, S, S] (or the cached backbone outputs
``features_perturbed`` / ``embedding_perturbed``), ``perturb_box`` [4] (x0, y0, x1, y1 as
fractions of the face side), ``perturb_paste`` and ``perturb_cover`` (1.0 or 0.0). The model
turns the box into ``perturb_coverage`` [h, w], the share of each grid cell it covers, with
the cells where they really sit (``xcos.models.geometry.box_coverage``).
Everything is a pure function of (seed, epoch, index), like the pairs themselves.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from xcos.config import PerturbSettings
from xcos.data.pasting import box_mask, paste

#: A perturbation: pasted (True) or covered, its box in fractions, the donor face (pasted), and
#: the flat colour (covered) in the normalised range.
Perturbation = tuple[bool, tuple[float, float, float, float], int, tuple[float, float, float]]


def draw_perturbation(
    settings: PerturbSettings,
    rng: np.random.Generator,
    donor_of: Callable[[np.random.Generator], int],
) -> Perturbation:
    """One perturbation: kind, box (fractions), donor index (``donor_of(rng)``), colour."""
    pasted = bool(rng.random() < settings.paste)
    width, height = rng.uniform(*settings.side, size=2)
    x0, y0 = rng.uniform(0.0, 1.0 - width), rng.uniform(0.0, 1.0 - height)
    donor = int(donor_of(rng)) if pasted else -1
    colour = tuple(float(c) for c in rng.uniform(-1.0, 1.0, size=3))
    return pasted, (float(x0), float(y0), float(x0 + width), float(y0 + height)), donor, colour


def pixel_box(box: tuple[float, float, float, float], size: int) -> tuple[int, int, int, int]:
    """A fractional box in pixels of a face of side ``size`` (at least one pixel wide)."""
    x0, y0, x1, y1 = (round(float(v) * size) for v in box)
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def apply_perturbation(
    face: torch.Tensor, perturbation: Perturbation, donor: torch.Tensor | None
) -> torch.Tensor:
    """Face [3, S, S] (normalised) with the perturbation applied."""
    pasted, box, _, colour = perturbation
    size = face.shape[-1]
    if pasted:
        if donor is None:
            raise ValueError("a pasted perturbation needs its donor face")
        mask = box_mask(size, pixel_box(box, size))
        return paste(face, donor, mask)
    x0, y0, x1, y1 = pixel_box(box, size)
    covered = face.clone()
    covered[:, y0:y1, x0:x1] = torch.tensor(colour, dtype=face.dtype).view(3, 1, 1)
    return covered


def perturbation_fields(perturbation: Perturbation) -> dict[str, torch.Tensor]:
    """The batch keys describing a perturbation (everything but the perturbed face)."""
    pasted, box, _, _ = perturbation
    return {
        "perturb_box": torch.tensor(box, dtype=torch.float32),
        "perturb_paste": torch.tensor(float(pasted)),
        "perturb_cover": torch.tensor(float(not pasted)),
    }
