"""Faithfulness of explanation maps, every method side by side (``xcos.explain.faithfulness``).

Games with a known answer and curves that move the score, on one model:

- swap game (``--pairs``, same-person pairs): one region of face B (left eye, right eye, nose,
  mouth, from the model's alignment template) replaced by another person's; hit = the swap
  moved the map's most different cell into the region from outside it;
- pointing game (``--one-region``, SynthFaces one-region pairs), with the same rule;
- deletion / insertion (``--pairs``): B's cells replaced by a donor's (another person), in the
  map's order;
- self-swap game (``--pairs --self-swap``): face B against B with one region swapped (the
  only difference between the two images); hit = the map's most different cell is in the region;
- agreement with the recognizer (``--pairs --agreement N``): Spearman correlation of each map
  with the measured effect of each cell on the recognizer's cosine, on N same-person and N
  different-person pairs;
- attention response (``--pairs``): covered cells of face B lose attention;
- cost: backbone images and backward passes per pair, and milliseconds per pair on this CPU.

Every method explains the xCos score, except ``decomposition`` (the exact split of the
recognizer's own cosine). Example (SynthFaces demo model, then dlib on LFW View 1):

    python bench/faithfulness.py -p saved/demo/checkpoints/best.pth \\
        --pairs data/synthfaces/synth_test.csv \\
        --one-region data/synthfaces/synth_test_one_region.csv --count 200
    python bench/faithfulness.py -p saved/dlib/checkpoints/best.pth \\
        --pairs ../shared/data/lfw/pairsDevTest.txt --count 200
"""

from __future__ import annotations

import argparse
import csv
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from xcos.data.images import read_face, to_tensor
from xcos.evaluation.evaluator import compare_images
from xcos.explain.baselines import (
    GradCAM,
    Occlusion,
    RandomMap,
    XCosContribution,
    XCosDifference,
    XCosPatchCosine,
    default_layer,
    xcos_target,
)
from xcos.explain.decomposition import decompose, supports_decomposition
from xcos.explain.effects import cell_effects
from xcos.explain.faithfulness import (
    GameResult,
    OneRegionPair,
    attention_drops,
    deletion_insertion,
    effect_agreement,
    favourite_cell_share,
    play_pointing_game,
    play_self_swap_game,
    play_swap_game,
)
from xcos.explain.regions import region_masks
from xcos.explain.report import pair_set_for_model
from xcos.explain.verifier import Verifier
from xcos.models.geometry import grid_edges, pixel_spans


class Method:
    """A difference method that counts its cost: backbone images, backward passes, seconds."""

    def __init__(self, name: str, compute: Callable, backward: int = 0) -> None:
        self.name, self.compute, self.backward = name, compute, backward
        self.calls, self.seconds, self.images = 0, 0.0, 0

    def __call__(self, model, face_a: torch.Tensor, face_b: torch.Tensor) -> np.ndarray:
        counter = default_layer(model).register_forward_hook(self._count)
        start = time.perf_counter()
        try:
            return self.compute(model, face_a, face_b)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1
            counter.remove()

    def _count(self, module, args, output) -> None:
        self.images += int(output.shape[0])

    def cost(self) -> str:
        calls = max(1, self.calls)
        return (
            f"{self.images / calls / 2:>8.1f}{self.backward:>10d}"
            f"{self.seconds / calls * 1000:>12.1f}"
        )


def explainer_method(name: str, explainer) -> Method:
    backward = 1 if isinstance(explainer, GradCAM) else 0
    return Method(name, lambda m, a, b: explainer.explain(m, a, b).difference, backward)


def decomposition_method(model, face_a, face_b) -> np.ndarray:
    return decompose(model, face_a, face_b)[1][0].cpu().numpy()


def pixel_difference(model, face_a, face_b) -> np.ndarray:
    """A control that reads no model: the mean absolute pixel difference of each cell. It
    shows what a game rewards in plain pixel change (it knows nothing of the model)."""
    spans = pixel_spans(grid_edges(model.backbone, face_a.shape[-1]))
    change = (face_a - face_b).abs().sum(dim=1)[0]
    return np.array([[float(change[y0:y1, x0:x1].mean()) for x0, x1 in spans] for y0, y1 in spans])


def recognizer_occlusion(model, face_a, face_b) -> np.ndarray:
    """Grid occlusion of the recognizer's own cosine: how much it rises when B's cell is
    replaced by A's (``xcos.explain.effects``; what ``data.effects`` distils into the head)."""
    spans = pixel_spans(grid_edges(model.backbone, face_a.shape[-1]))
    return cell_effects(model.backbone, face_a, face_b, spans)[0][0]


def constant_map(model, face_a, face_b) -> np.ndarray:
    """A control that ignores the pair: the same flat map every time. It has no most
    different cell, so every game must score it 0, and its favourite cell is every pair's."""
    grid = model.backbone.grid_size
    return np.ones((grid, grid))


def build_methods(model) -> dict[str, Method]:
    """Every method, each explaining the xCos score (``decomposition``: the model's cosine)."""
    explainers = {
        "xcos_contribution": XCosContribution(),
        "xcos_difference": XCosDifference(),
        "xcos_patch_cosine": XCosPatchCosine(),
        "gradcam": GradCAM(target=lambda out: 1.0 - out["xcos"], higher="different"),
        "occlusion_blur": Occlusion(target=xcos_target, fill="blur"),
        "occlusion_mean": Occlusion(target=xcos_target, fill="mean"),
        "occlusion_other": Occlusion(target=xcos_target, fill="other"),
        "random": RandomMap(seed=0),
    }
    methods = {name: explainer_method(name, e) for name, e in explainers.items()}
    if supports_decomposition(model):
        methods["decomposition"] = Method("decomposition", decomposition_method)
    if model.backbone.embedding_dim:
        methods["recognizer_occlusion"] = Method("recognizer_occlusion", recognizer_occlusion)
    methods["pixel_difference"] = Method("pixel_difference", pixel_difference)
    methods["constant"] = Method("constant", constant_map)
    return methods


def same_person_pairs(pair_set, count: int, size: int, seed: int = 0):
    """(A, B, donor) faces [1, 3, S, S] of the first ``count`` same-person pairs; the donor is
    a face of a different-person pair whose people are neither A's nor B's (when names are
    known)."""
    rng = np.random.default_rng(seed)
    names = pair_set.extra
    same = np.flatnonzero(pair_set.labels == 1)[:count]
    different = np.flatnonzero(pair_set.labels == 0)
    triples = []
    for index in same:
        while True:
            donor_pair = int(rng.choice(different))
            if not names or names["name_b"][donor_pair] != names["name_a"][index]:
                break
        image_a, image_b = pair_set.pairs[index]
        donor = pair_set.pairs[donor_pair][1]
        triples.append(
            tuple(to_tensor(pair_set.image(int(j), size))[None] for j in (image_a, image_b, donor))
        )
    return triples


SYNTH_FIX = "one-region pairs are SynthFaces faces: use a model of their size"


def one_region_pairs(path: Path, count: int, size: int) -> list[OneRegionPair]:
    """The first ``count`` pairs of a SynthFaces one-region CSV, at the model's input size."""
    with path.open(newline="") as stream:
        rows = list(csv.DictReader(stream))[:count]
    return [
        OneRegionPair(
            *(
                to_tensor(read_face(path.parent / row[key], size, SYNTH_FIX))[None]
                for key in ("path_a", "path_b")
            ),
            row["region"],
        )
        for row in rows
    ]


def score_fn(model) -> Callable:
    @torch.no_grad()
    def scores(faces_a: torch.Tensor, faces_b: torch.Tensor) -> dict[str, float]:
        out = compare_images(model, faces_a, faces_b)
        return {"xcos": float(out["xcos"][0]), "cos": float(out["cos"][0])}

    return scores


def print_game(title: str, results: dict[str, GameResult], chance: dict[str, list[float]]) -> None:
    regions = list(chance)
    print(f"\n{title}")
    print(f"{'method':<20}{'all':>8}" + "".join(f"{r:>11}" for r in regions))
    for name, result in results.items():
        print(
            f"{name:<20}{result.rate() * 100:>7.1f}%"
            + "".join(f"{result.rate(r) * 100:>10.1f}%" for r in regions)
        )
    overall = np.mean([c for values in chance.values() for c in values])
    print(
        f"{'chance (random map)':<20}{overall * 100:>7.1f}%"
        + "".join(f"{np.mean(chance[r]) * 100:>10.1f}%" for r in regions)
    )
    counts = "".join(f"{len(chance[r]):>11d}" for r in regions)
    print(f"{'pairs':<20}{sum(len(v) for v in chance.values()):>8d}" + counts)


def occluder_cells(grid: int, count: int, seed: int = 1) -> list[np.ndarray]:
    """Random blocks of one to two cells on a side to cover, inside the face's inner cells
    (the outer ring is background or hair on both templates)."""
    rng = np.random.default_rng(seed)
    blocks = []
    for _ in range(count):
        rows, cols = (int(rng.integers(1, 3)) for _ in range(2))
        top, left = int(rng.integers(1, grid - rows)), int(rng.integers(1, grid - cols))
        cells = np.zeros((grid, grid), dtype=bool)
        cells[top : top + rows, left : left + cols] = True
        blocks.append(cells)
    return blocks


def different_pairs(pair_set, count: int, size: int):
    """(A, B) faces [1, 3, S, S] of the first ``count`` different-person pairs."""
    different = np.flatnonzero(pair_set.labels == 0)[:count]
    return [
        tuple(to_tensor(pair_set.image(int(j), size))[None] for j in pair_set.pairs[index])
        for index in different
    ]


def print_agreement(agreement: dict[str, list[float]], same: int) -> None:
    """Mean Spearman agreement of each method with the measured effects: all pairs, the
    same-person ones (the first ``same``) and the different-person ones."""
    print(
        f"\nagreement with the recognizer (Spearman with measured cell effects), {same} "
        f"same-person + {len(next(iter(agreement.values()))) - same} different-person pairs"
    )
    print(f"{'method':<22}{'all':>8}{'same':>8}{'different':>11}{'median':>8}")
    for name, values in agreement.items():
        values = np.asarray(values)
        print(
            f"{name:<22}{values.mean():>8.3f}{values[:same].mean():>8.3f}"
            f"{values[same:].mean():>11.3f}{np.median(values):>8.3f}"
        )


def print_swap_cases(game) -> None:
    """Why swaps hit or miss: how much each swap lowered the scores, and per method how often
    the unmodified pair's most different cell was already in the region (no hit possible) and
    how often the map rose the most in the region."""
    print("\nmean score drop per swap (unmodified minus swapped):")
    for region, drops in game.drops.items():
        print(f"  {region:<10} " + "  ".join(f"{k} {np.mean(v):.4f}" for k, v in drops.items()))
    print(
        f"{'per case':<20}{'already inside':>16}{'hits / eligible':>17}"
        f"{'rose most inside':>18}{'favourite cell':>16}"
    )
    for name, result in game.results.items():
        inside = game.already_inside[name].rate()
        eligible = result.rate() / max(1e-9, 1.0 - inside)
        rose = game.changed_most_inside[name].rate()
        favourite = favourite_cell_share(game.original_cells[name])
        print(
            f"{name:<20}{inside * 100:>15.1f}%{eligible * 100:>16.1f}%{rose * 100:>17.1f}%"
            f"{favourite * 100:>15.1f}%"
        )


def print_curves(model, triples, methods: dict[str, Method], spans) -> None:
    """Deletion / insertion AUCs of every method, B's cells replaced by the donor's."""

    def batch_scores(faces_a, faces_b):
        return compare_images(model, faces_a, faces_b)["xcos"].float().cpu().numpy()

    print(f"\ndeletion / insertion, B's cells replaced by a donor's: {len(triples)} pairs")
    print(f"{'method':<20}{'deletion (lower)':>18}{'insertion (higher)':>20}")
    for name, method in methods.items():
        curves = [
            deletion_insertion(batch_scores, a, b, donor, method(model, a, b), spans)
            for a, b, donor in triples
        ]
        deletion, insertion = np.mean(curves, axis=0)
        print(f"{name:<20}{deletion:>18.4f}{insertion:>20.4f}")


def attention_response(model, triples, spans) -> float:
    """Share of pairs whose covered cells (a random block of B, flat grey) lose attention."""
    blocks = occluder_cells(model.backbone.grid_size, len(triples))

    def attention(face_a, face_b):
        return compare_images(model, face_a, face_b)["attention"][0].float().cpu().numpy()

    drops = [
        attention_drops(attention, a, b, cells, spans)
        for (a, b, _), cells in zip(triples, blocks, strict=True)
    ]
    return float(np.mean(drops))


def run(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    model = Verifier.from_checkpoint(args.pretrained, threshold=0.0, device="cpu").model
    size = model.input_size
    edges = grid_edges(model.backbone, size)
    if args.equal_cells:  # where a drawing on equal squares would claim the cells are
        edges = np.linspace(0.0, size, model.backbone.grid_size + 1)
    spans = pixel_spans(edges)
    methods = build_methods(model)
    if args.methods:
        methods = {name: methods[name] for name in args.methods}
    print(f"model {args.pretrained}, input {size}, template {model.face_template}")
    if args.one_region:
        pairs = one_region_pairs(Path(args.one_region), args.count, size)
        results, chance = play_pointing_game(model, pairs, spans, methods)
        title = f"pointing game: {len(pairs)} one-region pairs of {args.one_region}"
        print_game(title, results, chance)
    if args.pairs:
        pair_set = pair_set_for_model(args.pairs, model)
        triples = same_person_pairs(pair_set, args.swap_count or args.count, size)
        masks = region_masks(model.face_template, size)
        game = play_swap_game(model, triples, masks, spans, methods, score_fn(model))
        title = f"swap game: {len(triples)} same-person pairs of {pair_set.name}"
        print_game(title, game.results, game.chance)
        print_swap_cases(game)
        if args.curve_count:
            print_curves(model, triples[: args.curve_count], methods, spans)
        if args.self_swap:
            self_game = play_self_swap_game(
                model,
                [(b, donor) for _, b, donor in triples],
                masks,
                spans,
                methods,
                score_fn(model),
            )
            title = f"self-swap game: {len(triples)} faces of {pair_set.name}, B against B swapped"
            print_game(title, self_game.results, self_game.chance)
            print(
                f"{'favourite cell':<20}"
                + "".join(
                    f"{name} {favourite_cell_share(cells) * 100:.1f}%  "
                    for name, cells in self_game.swapped_cells.items()
                )
            )
        if args.agreement:
            same = [(a, b) for a, b, _ in triples[: args.agreement]]
            pairs = same + different_pairs(pair_set, args.agreement, size)
            print_agreement(effect_agreement(model, pairs, spans, methods), len(same))
        share = attention_response(model, triples, spans)
        print(
            f"\nattention response: covered cells lose attention in {share * 100:.1f}% of "
            f"{len(triples)} occluded pairs"
        )
    print(f"\n{'cost per pair':<20}{'images':>8}{'backward':>10}{'ms (CPU)':>12}")
    for name, method in methods.items():
        print(f"{name:<20}{method.cost()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-p", "--pretrained", required=True, help="an xcos checkpoint")
    parser.add_argument("--pairs", help="a pair set with same-person pairs (CSV, pack, LFW .txt)")
    parser.add_argument("--one-region", help="SynthFaces one-region pairs CSV (pointing game)")
    parser.add_argument("--count", type=int, default=200, help="pairs per game")
    parser.add_argument("--swap-count", type=int, help="pairs of the swap game (default --count)")
    parser.add_argument("--curve-count", type=int, default=50, help="pairs for the curves")
    parser.add_argument("--methods", nargs="*", help="only these methods")
    parser.add_argument(
        "--self-swap", action="store_true", help="also play the self-swap game (B against B)"
    )
    parser.add_argument(
        "--agreement",
        type=int,
        default=0,
        help="Spearman agreement with the recognizer's measured cell effects on this many "
        "same-person and as many different-person pairs",
    )
    parser.add_argument(
        "--equal-cells",
        action="store_true",
        help="judge the games on equal square cells instead of where the backbone's cells sit",
    )
    torch.set_num_threads(max(1, torch.get_num_threads()))
    run(parser.parse_args())


if __name__ == "__main__":
    main()
