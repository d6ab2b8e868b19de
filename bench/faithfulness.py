"""Faithfulness of explanation maps: deletion / insertion curves and the pointing game.

Methods compared side by side on the same pairs and model: the xCos contribution map
(patch cosine x attention), Grad-CAM, occlusion on the grid, a random map, and (for reference)
the patch cosine map alone; every method explains the xCos score.

- Deletion: the grid cells are replaced, in both faces, by a blurred copy of the face, in the
  order of the method's map (most similar cell first); the pair's xCos score is recomputed
  after each step. Area under that curve (x from 0 to 1): lower = the map found the cells the
  score rests on. Insertion: start from both faces blurred and put the cells back in the same
  order; higher area = better. Run on same-person pairs (the scores that have something to
  lose).
- Pointing game, on SynthFaces one-region pairs (two renderings of one identity whose faces
  differ in one region, with its box recorded by the generator): how often the cell with the
  lowest value of the map (the least similar) has its centre inside the changed region.

    python bench/faithfulness.py -p saved/demo/checkpoints/best.pth \
        --pairs data/synthfaces/synth_test.csv \
        --one-region data/synthfaces/synth_test_one_region.csv [--count 60]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch

from xcos.data.images import read_rgb, to_tensor
from xcos.explain.baselines import (
    EXPLAINERS,
    Occlusion,
    PairExplanation,
    XCosContribution,
    compare_pairs,
    xcos_target,
)
from xcos.explain.report import pair_set_for_model
from xcos.explain.verifier import Verifier


class PatchCosine(XCosContribution):
    """The patch cosine map alone (xCos without its attention weights), for comparison."""

    name = "xcos_cosine"

    @torch.no_grad()
    def _explain(self, model, image_a, image_b) -> PairExplanation:
        outputs = compare_pairs(model, image_a, image_b)
        return PairExplanation(
            self.name, outputs["patch_cosine"][0].float().cpu().numpy(), float(outputs["xcos"][0])
        )


def read_rows(path: Path, count: int, label: int | None = None) -> list[dict[str, str]]:
    """The first ``count`` rows of a pair CSV (with ``label`` only, when given)."""
    with path.open(newline="") as stream:
        rows = [r for r in csv.DictReader(stream) if label is None or int(r["label"]) == label]
    return rows[:count]


def load_pair(row: dict[str, str], root: Path, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return tuple(to_tensor(read_rgb(root / row[key], size))[None] for key in ("path_a", "path_b"))


def combined_map(explanation) -> np.ndarray:
    """One [h, w] map per pair: methods that explain each face separately are summed."""
    if explanation.map_b is None:
        return explanation.map
    return explanation.map + explanation.map_b


def progressive(
    start: torch.Tensor, source: torch.Tensor, order: np.ndarray, height: int, width: int
) -> torch.Tensor:
    """[h*w + 1, 3, S, S]: ``start`` with the cells of ``order`` copied from ``source`` one by
    one (step 0: none)."""
    size = start.shape[2]
    rows = [round(i * size / height) for i in range(height + 1)]
    cols = [round(j * size / width) for j in range(width + 1)]
    faces, current = [start[0]], start[0].clone()
    for cell in order:
        i, j = divmod(int(cell), width)
        window = (slice(None), slice(rows[i], rows[i + 1]), slice(cols[j], cols[j + 1]))
        current = current.clone()
        current[window] = source[0][window]
        faces.append(current)
    return torch.stack(faces)


@torch.no_grad()
def curves(model, image_a, image_b, order, height, width) -> tuple[np.ndarray, np.ndarray]:
    """xCos along the deletion and the insertion of the cells in ``order``."""
    cell = max(1, image_a.shape[2] // height)
    blur_a, blur_b = (Occlusion(fill="blur").filled(x, cell) for x in (image_a, image_b))
    deletion = compare_pairs(
        model,
        progressive(image_a, blur_a, order, height, width),
        progressive(image_b, blur_b, order, height, width),
    )["xcos"]
    insertion = compare_pairs(
        model,
        progressive(blur_a, image_a, order, height, width),
        progressive(blur_b, image_b, order, height, width),
    )["xcos"]
    return deletion.float().cpu().numpy(), insertion.float().cpu().numpy()


def area(curve: np.ndarray) -> float:
    """Area under a curve sampled at equal steps from 0 to 1 (trapezoids)."""
    return float(((curve[1:] + curve[:-1]) / 2).mean())


def pointing_hit(explanation_map: np.ndarray, row: dict[str, str], image_size: int) -> bool:
    """Whether the least-similar cell's centre lies in the changed region's box."""
    height, width = explanation_map.shape
    i, j = np.unravel_index(int(np.argmin(explanation_map)), explanation_map.shape)
    x, y = (j + 0.5) * image_size / width, (i + 0.5) * image_size / height
    return float(row["x0"]) <= x < float(row["x1"]) and float(row["y0"]) <= y < float(row["y1"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-p", "--pretrained", required=True, help="an xcos checkpoint")
    parser.add_argument(
        "--pairs", required=True, help="a pair set (CSV, pack, .bin, LFW .txt): same-person pairs"
    )
    parser.add_argument("--one-region", help="SynthFaces one-region pairs CSV (pointing game)")
    parser.add_argument("--count", type=int, default=60, help="pairs of each kind")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = Verifier.from_checkpoint(args.pretrained, threshold=0.0, device="cpu").model
    size = model.input_size
    explainers = {**EXPLAINERS, PatchCosine.name: PatchCosine}
    methods = {name: cls(target=xcos_target) for name, cls in explainers.items()}
    deletion: dict[str, list[float]] = {name: [] for name in methods}
    insertion: dict[str, list[float]] = {name: [] for name in methods}
    hits: dict[str, list[bool]] = {name: [] for name in methods}
    pair_set = pair_set_for_model(args.pairs, model)
    for index in np.flatnonzero(pair_set.labels == 1)[: args.count]:
        image_a, image_b = (
            to_tensor(pair_set.image(int(j), size))[None] for j in pair_set.pairs[index]
        )
        for name, method in methods.items():
            explanation = combined_map(method.explain(model, image_a, image_b))
            order = np.argsort(-explanation, axis=None, kind="stable")
            down, up = curves(model, image_a, image_b, order, *explanation.shape)
            deletion[name].append(area(down))
            insertion[name].append(area(up))
    if args.one_region:
        regions_csv = Path(args.one_region)
        for row in read_rows(regions_csv, args.count):
            image_a, image_b = load_pair(row, regions_csv.parent, size)
            scale = size / read_rgb(regions_csv.parent / row["path_a"]).shape[0]
            scaled = {k: str(float(row[k]) * scale) for k in ("x0", "y0", "x1", "y1")}
            for name, method in methods.items():
                explanation = combined_map(method.explain(model, image_a, image_b))
                hits[name].append(pointing_hit(explanation, scaled, size))
    height, width = explanation.shape
    print(f"model {args.pretrained}, grid {height}x{width}, score explained: xCos")
    print(f"deletion/insertion: {len(deletion['xcos'])} same-person pairs of {pair_set.name}")
    if args.one_region:
        print(f"pointing game: {len(hits['xcos'])} one-region pairs of {regions_csv.name}")
    print(
        f"{'method':<12}{'deletion AUC (lower)':>22}{'insertion AUC (higher)':>24}"
        f"{'pointing game':>16}"
    )
    for name in methods:
        pointing = f"{np.mean(hits[name]) * 100:>15.1f}%" if hits[name] else f"{'-':>16}"
        print(
            f"{name:<12}{np.mean(deletion[name]):>22.4f}{np.mean(insertion[name]):>24.4f}"
            + pointing
        )


if __name__ == "__main__":
    main()
