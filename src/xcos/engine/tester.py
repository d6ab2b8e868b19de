"""Test mode: score pair sets with a trained model and write metrics, scores and figures."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import torch

from xcos.config import Config
from xcos.data.pair_set_specs import load_pair_set
from xcos.errors import ConfigError
from xcos.evaluation.evaluator import PairSetResult, evaluate_pair_set, pick_examples
from xcos.evaluation.roc import roc_figure, roc_points
from xcos.explain.explanation import explain_pairs
from xcos.explain.figures import save_figure
from xcos.io_utils import atomic_save_json, atomic_write
from xcos.models.xcos_model import build_and_load
from xcos.runtime import autocast_factory, seed_everything

log = logging.getLogger(__name__)


def run_test(
    config: Config, run_dir: Path, device: torch.device, weights: str | Path
) -> dict[str, Any]:
    """Evaluate ``weights`` on ``config.test.pair_sets``; returns the metrics.json content.

    Writes ``metrics.json``, ``scores/<set>.csv`` (pair, fold, label, xcos, cos) and
    ``figures/<set>_<n>.png`` into ``run_dir``.
    """
    if not config.test.pair_sets:
        raise ConfigError("test.pair_sets: empty; name at least one pair list to test on")
    seed_everything(config.seed, config.trainer.deterministic)
    run_dir.mkdir(parents=True, exist_ok=True)
    pair_sets = [
        load_pair_set(spec, f"test.pair_sets.{i}") for i, spec in enumerate(config.test.pair_sets)
    ]
    # The identity head and the target network only matter for training.
    model = build_and_load(config.model, weights, inference=True, device=device)
    summary = {}
    for pair_set in pair_sets:
        result = evaluate_pair_set(
            model,
            pair_set,
            device,
            batch_size=config.test.batch_size,
            flip=config.test.flip,
            autocast=autocast_factory(config.trainer.amp, device),
            metric_cfgs=config.test.metrics,
            compiled=config.test.compile,
        )
        summary[pair_set.name] = result.metrics
        write_scores(result, run_dir / "scores" / f"{pair_set.name}.csv")
        write_roc(result, run_dir / "roc" / f"{pair_set.name}.png")
        write_figures(model, result, run_dir / "figures", device, config.test.figures)
    atomic_save_json(summary, run_dir / "metrics.json", indent=2)
    return summary


def write_roc(result: PairSetResult, path: Path) -> None:
    """ROC curves of every score type of one pair set."""
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = result.pair_set.labels
    curves = {key: roc_points(scores, labels) for key, scores in result.scores.items()}
    save_figure(roc_figure(curves, f"ROC: {result.pair_set.name} ({len(labels)} pairs)"), path)


def write_scores(result: PairSetResult, path: Path) -> None:
    pair_set = result.pair_set
    with atomic_write(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["pair", "fold", "label", "xcos", "cos"])
        for i in range(len(pair_set)):
            writer.writerow(
                [
                    i,
                    int(pair_set.folds[i]),
                    int(pair_set.labels[i]),
                    f"{result.scores['xcos'][i]:.6f}",
                    f"{result.scores['cos'][i]:.6f}",
                ]
            )


def write_figures(
    model, result: PairSetResult, folder: Path, device: torch.device, count: int
) -> list[Path]:
    """Explanation figures of ``count`` pairs (same and different alternating): patch
    cosine centred on the threshold, attention and difference, the most different cells
    outlined, each cell on its real pixels (``explain_pairs``' explanations)."""
    if count <= 0:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    threshold = result.metrics["xcos"]["threshold"]
    paths = []
    picked = pick_examples(result.pair_set, count)
    for explanation in explain_pairs(model, result.pair_set, picked, device, threshold):
        path = folder / f"{result.pair_set.name}_pair{explanation.pair:05d}.png"
        save_figure(explanation.figure(), path)
        paths.append(path)
    return paths


def format_table(summary: dict[str, Any]) -> str:
    """A compact terminal table: one row per pair set and score."""
    lines = [
        f"{'pair set':<20} {'score':<6} {'accuracy':>16} {'threshold':>9} {'AUC':>7} "
        f"{'EER':>7} {'TAR@FAR':>9}"
    ]
    for name, per_score in summary.items():
        for score, values in per_score.items():
            lines.append(f"{name:<20} {score:<6} " + _row(values))
    return "\n".join(lines)


def _row(values: dict[str, Any]) -> str:
    cells = []
    if "accuracy" in values:
        accuracy = f"{values['accuracy'] * 100:.2f} ± {values['accuracy_std'] * 100:.2f}%"
        cells += [f"{accuracy:>16}", f"{values['threshold']:>9.4f}"]
    if "auc" in values:
        far, tar = min(values["tar_at_far"].items(), key=lambda item: float(item[0]))
        cells += [
            f"{values['auc']:>7.4f}",
            f"{values['eer'] * 100:>6.2f}%",
            f"{tar * 100:>6.2f}%@{far}",
        ]
    return " ".join(cells)
