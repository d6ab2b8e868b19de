"""``Explanation``: one explained pair, the one shape that every part of xcos reads.

The Verifier (``Verifier.explain``), the tester's figures and a training run's logged maps
(``explain_pairs``), the HTML report and the server all hold their pairs as ``Explanation``s,
draw them with ``Explanation.figure`` and write them with ``Explanation.as_dict``.

It lives in ``explain``, not in ``evaluation`` below it: ``figure`` draws with
``xcos.explain.figures``, and evaluation itself needs no explained pair (it scores pair sets;
``evaluation.evaluator.compare_faces`` and ``compare_pairs`` give the arrays an
``Explanation`` is cut from).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from xcos.data.pair_sets import PairSet
from xcos.errors import ConfigError
from xcos.evaluation.evaluator import compare_faces
from xcos.explain.figures import LAYOUTS, most_different_cells
from xcos.models.geometry import grid_edges

#: A pair's aligned RGB uint8 faces [S, S, 3], A then B.
FacePair = tuple[np.ndarray, np.ndarray]


@dataclass
class Explanation:
    """One verified pair. Maps are [h, w]; ``contribution`` = ``patch_cosine * attention``
    and sums to ``score``; ``difference`` = ``attention * (1 - patch_cosine)``, how much each
    cell pulls the score down (where the two faces differ), sums to ``1 - score``; ``faces``
    are the two aligned RGB faces actually compared; ``cell_edges`` [h + 1] are the cells'
    pixel edges on those faces (``xcos.models.geometry.grid_edges``), None for equal cells.

    ``same`` and ``threshold`` are None when nothing was decided (a training run's maps);
    ``label`` (the truth, 1: same person) and ``pair`` (its index in a pair set) are known for
    the pairs of a pair set; ``cell_regions`` names the facial region of each cell."""

    score: float
    same: bool | None
    threshold: float | None
    cos: float
    patch_cosine: np.ndarray
    attention: np.ndarray
    faces: FacePair
    difference: np.ndarray
    cell_edges: np.ndarray | None = None
    cell_regions: list[list[str | None]] | None = None
    label: int | None = None
    pair: int | None = None

    @classmethod
    def of_row(
        cls,
        compared: Mapping[str, np.ndarray],
        row: int,
        faces: FacePair,
        threshold: float | None,
        **known: Any,
    ) -> Explanation:
        """Pair ``row`` of a comparison's outputs (``SCORE_KEYS`` [N] and ``MAP_KEYS``
        [N, h, w] numpy arrays), decided at ``threshold`` (None: undecided); ``known``: the
        other fields (``cell_edges``, ``cell_regions``, ``label``, ``pair``)."""
        score = compared["xcos"][row]
        return cls(
            score=float(score),
            same=None if threshold is None else bool(score > threshold),
            threshold=None if threshold is None else float(threshold),
            cos=float(compared["cos"][row]),
            patch_cosine=compared["patch_cosine"][row],
            attention=compared["attention"][row],
            faces=faces,
            difference=compared["difference"][row],
            **known,
        )

    @property
    def contribution(self) -> np.ndarray:
        """[h, w]: what each cell adds to the score, ``patch_cosine * attention``."""
        return self.patch_cosine * self.attention

    @property
    def most_different_cells(self) -> list[list[int]]:
        """``[row, col]`` of the 3 cells with the highest ``difference``, highest first."""
        return most_different_cells(self.difference)

    @property
    def most_different_regions(self) -> list[dict[str, Any]]:
        """The ``most_different_cells`` in words: each cell, the facial region covering it
        (``left_eye``, ``right_eye``, ``nose``, ``mouth``, or None; "left" is the image's
        left) and its ``share`` of the whole difference (``1 - score``)."""
        total = float(self.difference.sum())
        return [
            {
                "cell": [row, col],
                "region": self.cell_regions[row][col] if self.cell_regions else None,
                "share": float(self.difference[row, col]) / total if total > 0 else 0.0,
            }
            for row, col in self.most_different_cells
        ]

    def figure(self, layout: str = "paper") -> Figure:
        """The explanation drawn in ``layout``: ``"paper"`` or ``"overlay"``
        (``xcos.explain.figures``), with the truth and the decision when they are known."""
        if layout not in LAYOUTS:
            raise ConfigError(f"layout: expected one of {', '.join(LAYOUTS)}, got {layout!r}")
        return LAYOUTS[layout](
            self.faces[0],
            self.faces[1],
            self.patch_cosine,
            self.attention,
            self.score,
            self.cos,
            self.label,
            self.threshold,
            difference=self.difference,
            edges=self.cell_edges,
        )

    def as_dict(self) -> dict[str, Any]:
        """The explanation's fields under the API's names, maps as nested lists."""
        return {
            "score": self.score,
            "same": self.same,
            "threshold": self.threshold,
            "cos": self.cos,
            "patch_cosine": self.patch_cosine.tolist(),
            "attention": self.attention.tolist(),
            "contribution": self.contribution.tolist(),
            "difference": self.difference.tolist(),
            "most_different_cells": self.most_different_cells,
            "most_different_regions": self.most_different_regions,
        }


@torch.no_grad()
def explain_pairs(
    model: torch.nn.Module,
    pair_set: PairSet,
    indices: Sequence[int],
    device: torch.device,
    threshold: float | None = None,
    compared: Mapping[str, np.ndarray] | None = None,
) -> list[Explanation]:
    """``Explanation``s of the pairs ``indices`` of ``pair_set``, with their truth and the
    cells' pixel edges, decided at ``threshold`` when given.

    ``compared``: the outputs of every pair of the set, already scored
    (``compare_pairs(..., keep_maps=True)``); the pairs are then read from there rather than
    compared again, so they keep the very scores they were picked by."""
    size = model.input_size
    faces = [tuple(pair_set.image(int(j), size) for j in pair_set.pairs[i]) for i in indices]
    rows: Sequence[int] = indices
    if compared is None and faces:
        was_training = model.training
        model.eval()
        try:
            compared = compare_faces(model, [face for pair in faces for face in pair], device)
        finally:
            model.train(was_training)
        rows = range(len(indices))
    edges = grid_edges(model.backbone, size)
    return [
        Explanation.of_row(
            compared,
            row,
            pair_faces,
            threshold,
            cell_edges=edges,
            label=int(pair_set.labels[index]),
            pair=int(index),
        )
        for row, pair_faces, index in zip(rows, faces, indices, strict=True)
    ]
