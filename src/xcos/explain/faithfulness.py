"""Yardsticks for explanation maps: games with a known answer, and curves that move the score.

Every method is read in one orientation here: a *difference map* [h, w], higher = the cell
makes the two faces more different (``PairExplanation.difference``).

- **Swap game** (pair-controlled, after the XFR inpainting game and Patch-LFW): a same-person
  pair (A, B) is explained as it is, then with one facial region of B (an eye, the nose, the
  mouth; located from the alignment template, ``xcos.explain.regions``) replaced by the same
  region of another person's aligned face. The *most different cell* of a map is its unique
  maximum (a map whose maximum is shared by several cells, a constant one for instance, has
  none). A swap is a **hit** when the swapped pair's most different cell lies in the region's
  cells and the unmodified pair's did not: the swap moved it there from outside. A map that is
  the same for every pair never moves, and scores 0. Chance: a random map hits a region of
  ``k`` of ``n`` cells with probability ``(1 - k/n) * k/n``.
- **Pointing game** on SynthFaces one-region pairs (two renderings of one face that differ in
  one region, whose box the generator recorded), with the same rule: the control is the face
  compared with itself.
- **Deletion / insertion** with another identity: the cells of B are replaced, in the order of
  the map (most similar first), by the same cells of a donor face of another person
  (deletion), or put back into the donor face in that order (insertion). The area under the
  explained score's curve, over the fraction of cells: lower is better for deletion, higher
  for insertion.
- **Favourite cell**: the share of unmodified pairs whose most different cell is the method's
  most common one. A map that is the same for every pair scores 100%, so a high share warns
  that the map describes the model, not the pair.
- **Self-swap game**: face B against B with one region swapped (the swap game's regions and
  donors), so that the region is the only difference between the two images; the control is
  B against itself. Same hit rule.
- **Agreement with the recognizer**: the Spearman correlation between a map and the measured
  effect of each cell on the recognizer's cosine (``xcos.explain.effects``), per pair.
- **Attention response**: a block of one to two cells of face B is covered with flat grey;
  the pair "responds" when the attention on the covered cells drops.

Cells are where the backbone's cells really sit (``xcos.models.geometry``), and the cells of a
change are those holding enough of the pixels it changed (``xcos.explain.regions``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from xcos.explain.regions import change_mass, paste, region_cells
from xcos.models.geometry import Spans, cell_window

#: A method under test: (model, face_a, face_b) -> difference map [h, w] (faces [1, 3, S, S]).
DifferenceMethod = Callable[[object, torch.Tensor, torch.Tensor], np.ndarray]


def most_different_cell(difference: np.ndarray, rtol: float = 1e-6) -> int | None:
    """Row-major index of the map's unique maximum, or None when the maximum is shared."""
    flat = np.asarray(difference, dtype=np.float64).ravel()
    top = int(np.argmax(flat))
    tolerance = rtol * max(1.0, float(np.abs(flat).max()))
    if np.count_nonzero(flat >= flat[top] - tolerance) > 1:
        return None
    return top


def moved_into(original: np.ndarray, changed: np.ndarray, cells: np.ndarray) -> bool:
    """The hit rule: the changed pair's most different cell is in ``cells`` ([h, w] bool) and
    the original pair's is not (or it has none)."""
    flat = np.asarray(cells, dtype=bool).ravel()
    after = most_different_cell(changed)
    if after is None or not flat[after]:
        return False
    before = most_different_cell(original)
    return before is None or not flat[before]


def favourite_cell_share(cells: Sequence[int | None]) -> float:
    """Share of pairs whose most different cell is the most common one among ``cells`` (one
    per pair; None, no unique maximum, counts as a cell of its own)."""
    if not cells:
        return float("nan")
    counts: dict[int | None, int] = {}
    for cell in cells:
        counts[cell] = counts.get(cell, 0) + 1
    return max(counts.values()) / len(cells)


def chance_of_moving_into(cells: np.ndarray) -> float:
    """Hit probability of a map drawn at random for each pair: (1 - k/n) * k/n."""
    share = float(np.mean(cells))
    return (1.0 - share) * share


@dataclass
class GameResult:
    """Hits of one method on one game, by region."""

    hits: dict[str, list[bool]] = field(default_factory=dict)

    def add(self, region: str, hit: bool) -> None:
        self.hits.setdefault(region, []).append(bool(hit))

    def rate(self, region: str | None = None) -> float:
        values = (
            [h for hits in self.hits.values() for h in hits]
            if region is None
            else self.hits.get(region, [])
        )
        return float(np.mean(values)) if values else float("nan")

    def count(self, region: str | None = None) -> int:
        if region is None:
            return sum(len(h) for h in self.hits.values())
        return len(self.hits.get(region, []))


@dataclass
class SwapGame:
    """Results of the swap game: per method, hits by region; per region, chance and the mean
    drop of each score the swap caused (original minus swapped). Per case, for each method:
    ``already_inside`` (the unmodified pair's most different cell was in the region, so no
    hit was possible) and ``changed_most_inside`` (the map rose the most in the region's
    cells, whether or not that made them the most different); ``original_cells``: each
    unmodified pair's most different cell (``favourite_cell_share``)."""

    results: dict[str, GameResult]
    chance: dict[str, list[float]]
    drops: dict[str, dict[str, list[float]]]
    already_inside: dict[str, GameResult] = field(default_factory=dict)
    changed_most_inside: dict[str, GameResult] = field(default_factory=dict)
    original_cells: dict[str, list[int | None]] = field(default_factory=dict)
    swapped_cells: dict[str, list[int | None]] = field(default_factory=dict)


def in_cells(index: int | None, cells: np.ndarray) -> bool:
    """Whether a row-major cell index (None: no cell) is one of ``cells`` [h, w]."""
    return index is not None and bool(np.asarray(cells, dtype=bool).ravel()[index])


def play_swap_game(
    model: object,
    pairs: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    masks: dict[str, np.ndarray],
    spans: Spans,
    methods: dict[str, DifferenceMethod],
    scores: Callable[[torch.Tensor, torch.Tensor], dict[str, float]],
) -> SwapGame:
    """Play the swap game.

    Args:
        model: the model every method explains (passed through to the methods).
        pairs: (face A, face B, donor) [1, 3, S, S] each: A and B one person, the donor
            another.
        masks: region name -> [S, S] mask (``xcos.explain.regions.region_masks``).
        spans: the pixels of the model's grid cells (``xcos.models.geometry.pixel_spans``);
            a region's cells are those holding enough of the pixels the swap changed.
        methods: name -> difference method.
        scores: (faces A, faces B) -> named scores of the pair, to report each swap's drop.
    """
    game = SwapGame(
        {name: GameResult() for name in methods},
        {},
        {},
        {name: GameResult() for name in methods},
        {name: GameResult() for name in methods},
    )
    for face_a, face_b, donor in pairs:
        originals = {name: method(model, face_a, face_b) for name, method in methods.items()}
        for name, original in originals.items():
            game.original_cells.setdefault(name, []).append(most_different_cell(original))
        before = scores(face_a, face_b)
        for region, mask in masks.items():
            swapped = paste(face_b, donor, mask)
            cells = region_cells(change_mass(face_b, swapped), spans)
            after = scores(face_a, swapped)
            for key, value in before.items():
                game.drops.setdefault(region, {}).setdefault(key, []).append(value - after[key])
            game.chance.setdefault(region, []).append(chance_of_moving_into(cells))
            for name, method in methods.items():
                original, changed = originals[name], method(model, face_a, swapped)
                game.swapped_cells.setdefault(name, []).append(most_different_cell(changed))
                game.results[name].add(region, moved_into(original, changed, cells))
                inside = in_cells(most_different_cell(original), cells)
                game.already_inside[name].add(region, inside)
                rise = in_cells(most_different_cell(changed - original), cells)
                game.changed_most_inside[name].add(region, rise)
    return game


def play_self_swap_game(
    model: object,
    faces: Sequence[tuple[torch.Tensor, torch.Tensor]],
    masks: dict[str, np.ndarray],
    spans: Spans,
    methods: dict[str, DifferenceMethod],
    scores: Callable[[torch.Tensor, torch.Tensor], dict[str, float]],
) -> SwapGame:
    """The self-swap game: face B against B with one region swapped, so that the region is
    the only difference between the two images; the control is B against itself (a map that
    finds a difference there already, or ignores the pair, cannot hit). ``faces``: (face B,
    donor) [1, 3, S, S] each. The swap game's rules and fields otherwise (read the favourite
    cell of ``swapped_cells``: the unmodified pairs are identical)."""
    pairs = [(face, face, donor) for face, donor in faces]
    return play_swap_game(model, pairs, masks, spans, methods, scores)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps (ties share their mean rank); 0 when either map
    is constant (it ranks nothing)."""
    from scipy.stats import rankdata

    ranks_a = rankdata(np.asarray(a, dtype=np.float64).ravel())
    ranks_b = rankdata(np.asarray(b, dtype=np.float64).ravel())
    if ranks_a.std() == 0 or ranks_b.std() == 0:
        return 0.0
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def effect_agreement(
    model: object,
    pairs: Sequence[tuple[torch.Tensor, torch.Tensor]],
    spans: Spans,
    methods: dict[str, DifferenceMethod],
) -> dict[str, list[float]]:
    """Agreement with the recognizer: per method, the Spearman correlation of its difference
    map with the measured cell effects on the recognizer's cosine (``xcos.explain.effects``:
    B's cell replaced by A's), one value per pair (faces [1, 3, S, S]). ``model.backbone``
    is the recognizer."""
    from xcos.explain.effects import cell_effects

    agreement: dict[str, list[float]] = {name: [] for name in methods}
    for face_a, face_b in pairs:
        effects = cell_effects(model.backbone, face_a, face_b, spans)[0][0]
        for name, method in methods.items():
            agreement[name].append(spearman(method(model, face_a, face_b), effects))
    return agreement


@dataclass
class OneRegionPair:
    """A SynthFaces one-region pair: faces [1, 3, S, S] differing only in ``region``."""

    face_a: torch.Tensor
    face_b: torch.Tensor
    region: str


def play_pointing_game(
    model: object,
    pairs: Sequence[OneRegionPair],
    spans: Spans,
    methods: dict[str, DifferenceMethod],
) -> tuple[dict[str, GameResult], dict[str, list[float]]]:
    """The pointing game with the face-against-itself control; returns per-method hits by
    region and the chance of each pair, by region. A pair's cells are those holding enough
    of the pixels that differ between its faces."""
    results = {name: GameResult() for name in methods}
    chance: dict[str, list[float]] = {}
    for pair in pairs:
        cells = region_cells(change_mass(pair.face_a, pair.face_b), spans)
        chance.setdefault(pair.region, []).append(chance_of_moving_into(cells))
        for name, method in methods.items():
            control = method(model, pair.face_a, pair.face_a)
            changed = method(model, pair.face_a, pair.face_b)
            results[name].add(pair.region, moved_into(control, changed, cells))
    return results, chance


def progressive(
    start: torch.Tensor, source: torch.Tensor, order: np.ndarray, spans: Spans
) -> torch.Tensor:
    """[h*w + 1, 3, S, S]: ``start`` [1, 3, S, S] with the cells of ``order`` (row-major
    indices; pixels of each cell from ``spans``) copied from ``source`` one by one (step 0:
    none)."""
    faces, current = [start[0]], start[0].clone()
    for cell in order:
        rows, columns = cell_window(cell, spans)
        current = current.clone()
        current[:, rows, columns] = source[0][:, rows, columns]
        faces.append(current)
    return torch.stack(faces)


def area(curve: np.ndarray) -> float:
    """Area under a curve sampled at equal steps from 0 to 1 (trapezoids)."""
    curve = np.asarray(curve, dtype=np.float64)
    return float(((curve[1:] + curve[:-1]) / 2).mean())


def similarity_order(difference: np.ndarray) -> np.ndarray:
    """Cells from the most similar (least different) to the most different."""
    return np.argsort(np.asarray(difference).ravel(), kind="stable")


def deletion_insertion(
    score: Callable[[torch.Tensor, torch.Tensor], np.ndarray],
    face_a: torch.Tensor,
    face_b: torch.Tensor,
    donor: torch.Tensor,
    difference: np.ndarray,
    spans: Spans,
) -> tuple[float, float]:
    """(deletion AUC, insertion AUC) of one pair: B's cells replaced by the donor's in the
    map's order, most similar first (deletion), or put back into the donor (insertion).
    ``score(faces_a, faces_b)`` scores a batch of pairs [N]."""
    order = similarity_order(difference)
    deleted = progressive(face_b, donor, order, spans)
    inserted = progressive(donor, face_b, order, spans)
    anchor = face_a.expand(len(deleted), -1, -1, -1)
    return area(score(anchor, deleted)), area(score(anchor, inserted))


def cover_cells(face: torch.Tensor, cells: np.ndarray, spans: Spans, value: float = 0.0):
    """``face`` [1, 3, S, S] with the pixels of ``cells`` ([h, w] bool) set to ``value``
    (0 is mid-grey in the normalised range)."""
    covered = face.clone()
    for cell in np.flatnonzero(cells):
        covered[(..., *cell_window(cell, spans))] = value
    return covered


def attention_drops(
    attention: Callable[[torch.Tensor, torch.Tensor], np.ndarray],
    face_a: torch.Tensor,
    face_b: torch.Tensor,
    cells: np.ndarray,
    spans: Spans,
) -> bool:
    """Whether covering ``cells`` of face B with flat grey lowers their attention."""
    before = attention(face_a, face_b)
    after = attention(face_a, cover_cells(face_b, cells, spans))
    return float(after[cells].sum()) < float(before[cells].sum())
