"""A static HTML report of a model's decisions on a pair set: its worst errors and a sample of
correct decisions, each with its explanation figure and the cells where the two faces differ
the most (the top of the difference map, numbered 1, 2, 3 on the figure).

The report is a folder: ``index.html`` and ``figures/*.png`` with relative links, no scripts
and no external resources, so it opens offline and can be zipped or served as is.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from xcos.data.pair_sets import PairSet
from xcos.evaluation.evaluator import compare_pairs, embed_images
from xcos.explain.explanation import Explanation, explain_pairs
from xcos.explain.figures import save_figure
from xcos.io_utils import atomic_write


def pair_set_for_model(path: str, model: torch.nn.Module, where: str = "--pairs") -> PairSet:
    """Read a pair set; LFW pair files (photos) are aligned the way ``model`` expects (its
    template and input size), through the pack cache. Other sets must already hold aligned
    faces of the model's input size: a CSV of photos (or a pack made for another model) is
    refused here, before any scoring, with the ``xcos prepare`` command that aligns it."""
    from xcos.data.pair_set_specs import load_pair_set
    from xcos.data.pair_sets import LFW_ALIGNMENT

    spec: str | dict = path
    if Path(path).suffix.lower() == ".txt":
        align = LFW_ALIGNMENT | {"template": model.face_template, "image_size": model.input_size}
        spec = {"type": "lfw", "path": path, "align": align}
    pair_set = load_pair_set(spec, where)
    pair_set.check_image_size(model.input_size, model.face_template)
    return pair_set


@dataclass
class ReportEntry:
    """One pair shown in the report: its explanation and its figure's path relative to the
    report folder."""

    explanation: Explanation
    figure: str


def decisions(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """Indices of the false accepts, false rejects and correct decisions at ``threshold``."""
    same = scores > threshold
    return {
        "false accepts": np.flatnonzero(same & (labels == 0)),
        "false rejects": np.flatnonzero(~same & (labels == 1)),
        "correct decisions": np.flatnonzero(same == (labels == 1)),
    }


def pick_pairs(
    scores: np.ndarray, labels: np.ndarray, threshold: float, errors: int, correct: int, seed: int
) -> dict[str, list[int]]:
    """Indices of the worst false accepts (highest scores of different people), the worst false
    rejects (lowest scores of the same person) and a seeded sample of correct decisions."""
    found = decisions(scores, labels, threshold)
    false_accepts, false_rejects = found["false accepts"], found["false rejects"]
    sample = np.random.default_rng(seed).permutation(found["correct decisions"])[:correct]
    return {
        "false accepts": false_accepts[np.argsort(-scores[false_accepts])][:errors].tolist(),
        "false rejects": false_rejects[np.argsort(scores[false_rejects])][:errors].tolist(),
        "correct decisions": sorted(sample.tolist()),
    }


@torch.no_grad()
def write_report(
    model: torch.nn.Module,
    pair_set: PairSet,
    threshold: float,
    out: str | Path,
    device: torch.device,
    errors: int = 8,
    correct: int = 8,
    layout: str = "paper",
    seed: int = 0,
) -> Path:
    """Score every pair, pick the pairs to show, draw them and write ``out/index.html``."""
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    model.eval()
    descriptors = embed_images(model, pair_set, device)
    scores = compare_pairs(model, descriptors, pair_set.pairs, device, keep_maps=True)
    labels = pair_set.labels
    chosen = pick_pairs(scores["xcos"], labels, threshold, errors, correct, seed)
    sections = {}
    for title, indices in chosen.items():
        explained = explain_pairs(model, pair_set, indices, device, threshold, compared=scores)
        sections[title] = [_draw(explanation, out, layout) for explanation in explained]
    found = decisions(scores["xcos"], labels, threshold)
    counts = {title: len(indices) for title, indices in found.items()}
    accuracy = counts["correct decisions"] / len(labels)
    page = _page(pair_set.name, len(labels), threshold, accuracy, counts, sections)
    with atomic_write(out / "index.html", "w") as stream:  # never half a page
        stream.write(page)
    return out / "index.html"


def _draw(explanation: Explanation, out: Path, layout: str) -> ReportEntry:
    relative = f"figures/pair_{explanation.pair:06d}.png"
    save_figure(explanation.figure(layout), out / relative)
    return ReportEntry(explanation, relative)


def cells_text(cells: list[list[int]]) -> str:
    """``most different cells: (2, 3), (1, 1), (2, 2)`` for [row, col] cells, highest first."""
    return "most different cells: " + ", ".join(f"({row}, {col})" for row, col in cells)


STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table.summary td { padding: 0.2em 1em 0.2em 0; }
.entry { border: 1px solid #ccc; margin: 1em 0; padding: 0.5em; }
.entry img { max-width: 100%; }
"""


def _page(name, pairs, threshold, accuracy, counts, sections) -> str:
    title = f"xCos report: {html.escape(name)}"
    rows = [
        ("pair set", html.escape(name)),
        ("pairs", str(pairs)),
        ("threshold (xCos)", f"{threshold:.4f}"),
        ("accuracy at this threshold", f"{accuracy * 100:.2f}%"),
        *[(html.escape(k), str(v)) for k, v in counts.items()],
    ]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{title}</title><style>{STYLE}</style></head><body>",
        f"<h1>{title}</h1>",
        '<table class="summary">',
        *[f"<tr><td>{key}</td><td>{value}</td></tr>" for key, value in rows],
        "</table>",
    ]
    for heading, entries in sections.items():
        parts.append(f"<h2>{html.escape(heading)} ({len(entries)} shown)</h2>")
        if not entries:
            parts.append("<p>none</p>")
        for entry in entries:
            pair = entry.explanation
            truth = "same person" if pair.label else "different people"
            parts.append(
                f'<div class="entry"><p>pair {pair.pair}: xCos {pair.score:.4f}, '
                f"cos {pair.cos:.4f}, truth: {truth}, threshold {threshold:.4f}</p>"
                f"<p>{cells_text(pair.most_different_cells)}</p>"
                f'<img src="{html.escape(entry.figure)}" alt="explanation of pair {pair.pair}">'
                "</div>"
            )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
