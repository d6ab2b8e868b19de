"""The honest LFW protocol for an xCos head learned on LFW itself.

LFW View 2's ten folds are identity-disjoint (the pairs of fold k use only the people of set k
of ``people.txt``). For each fold k, a head is trained on the people of the other nine sets and
fold k's pairs are scored with it; its threshold is chosen on the other nine folds' pairs.
Reported side by side: the recognizer's plain cosine (no training: the usual 10-fold), xCos
with learned attention and xCos with uniform attention (a head trained the same way with every
cell weighted 1/(h*w)). View 1 (train on ``peopleDevTrain``, test on ``pairsDevTest``) is the
quick check.

The recognizer must be frozen (``model.freeze_backbone``): every LFW face is aligned once and
run through it once (both cached), so the twenty head trainings run on cached features.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xcos.config import Config, ConfigError, load_config
from xcos.data.lfw import read_lfw
from xcos.data.lfw_people import LFWFaceStore
from xcos.engine.features import cached_backbone_outputs
from xcos.engine.trainer import Trainer
from xcos.evaluation.evaluator import compare_pairs, describe_outputs
from xcos.evaluation.verification import held_out_accuracy, kfold_accuracy
from xcos.models.xcos_model import XCosModel, build_model

log = logging.getLogger(__name__)

#: The heads trained per fold: name -> head settings overriding the config's.
VARIANTS = {"xcos": {"attention": "learned"}, "xcos_uniform": {"attention": "uniform"}}


def run_lfw_protocol(
    config: Config,
    lfw: str | Path,
    run_dir: str | Path,
    device: torch.device,
    folds: Sequence[int] = tuple(range(1, 11)),
    view1: bool = True,
) -> dict[str, Any]:
    """Run the protocol; writes ``results.json`` into ``run_dir`` and returns it."""
    lfw, run_dir = Path(lfw), Path(run_dir)
    if not config.model.freeze_backbone:
        raise ConfigError(
            "model.freeze_backbone: the LFW protocol trains heads on a frozen recognizer's "
            "cached features; set it to true"
        )
    if config.model.cos != "embedding":
        raise ConfigError(
            "model.cos: the LFW protocol reports the frozen recognizer's own cosine next to "
            "the heads; set it to 'embedding' (with 'grid' the cos score depends on each head)"
        )
    train = config.data.train or {}
    if train.get("type") != "lfw_people_pairs":
        raise ConfigError(
            "data.train.type: the LFW protocol trains on LFW people; expected "
            f"'lfw_people_pairs', got {train.get('type')!r}"
        )
    align = dict(train.get("align") or {})
    store = LFWFaceStore(lfw / "images", align, "data.train.align")
    model = build_model(config.model).to(device)
    outputs = cached_backbone_outputs(
        model, store.face, len(store), store.cache_key, device, flip=config.test.flip
    )
    results: dict[str, Any] = {"config": config.name, "folds": list(folds)}
    view2 = read_lfw(str(lfw / "pairs.txt"))
    view2_pairs = store.indices(list(view2.images), "pairs.txt")[view2.pairs]
    results["view2"] = view2_results(
        config, lfw, run_dir, device, outputs, view2_pairs, view2.labels, view2.folds, folds
    )
    if view1:
        results["view1"] = view1_results(config, lfw, run_dir, device, outputs, store)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def view2_results(
    config: Config,
    lfw: Path,
    run_dir: Path,
    device: torch.device,
    outputs: dict[str, torch.Tensor],
    pairs: np.ndarray,
    labels: np.ndarray,
    pair_folds: np.ndarray,
    folds: Sequence[int],
) -> dict[str, Any]:
    """Per-fold and mean accuracy of cos, xCos and uniform-attention xCos on View 2."""
    per_fold: dict[str, list[float]] = {"cos": [], **{name: [] for name in VARIANTS}}
    thresholds: dict[str, list[float]] = {name: [] for name in per_fold}
    cos_scores = None
    for fold in folds:
        test = pair_folds == fold - 1  # pairs.txt fold k holds the people of people.txt set k
        for name, head in VARIANTS.items():
            train_data = {"people": str(lfw / "people.txt"), "sets": None, "exclude_sets": [fold]}
            model = train_head(config, train_data, head, run_dir / f"fold{fold:02d}" / name, device)
            scores = score_pairs(model, outputs, pairs, device, config.test.flip)
            for label, key in head_scores(name, scores):
                accuracy, threshold = held_out_accuracy(scores[key], labels, test)
                per_fold.setdefault(label, []).append(accuracy)
                thresholds.setdefault(label, []).append(threshold)
                log.info("LFW fold %d %s: %.2f%%", fold, label, accuracy * 100)
            cos_scores = scores["cos"]  # the frozen recognizer's: the same for every head
        accuracy, threshold = held_out_accuracy(cos_scores, labels, test)
        per_fold["cos"].append(accuracy)
        thresholds["cos"].append(threshold)
    summary = {
        name: {
            "accuracy": float(np.mean(values)),
            "accuracy_std": float(np.std(values)),
            "per_fold": values,
            "thresholds": thresholds[name],
        }
        for name, values in per_fold.items()
    }
    if len(folds) == 10:  # the usual 10-fold figure of the plain cosine, as a cross-check
        summary["cos"]["standard_10_fold"] = kfold_accuracy(cos_scores, labels, pair_folds).accuracy
    return summary


def view1_results(
    config: Config,
    lfw: Path,
    run_dir: Path,
    device: torch.device,
    outputs: dict[str, torch.Tensor],
    store: LFWFaceStore,
) -> dict[str, Any]:
    """View 1: heads trained on peopleDevTrain, 10-fold accuracy on pairsDevTest."""
    dev_test = read_lfw(str(lfw / "pairsDevTest.txt"))
    pairs = store.indices(list(dev_test.images), "pairsDevTest.txt")[dev_test.pairs]
    results = {}
    for name, head in VARIANTS.items():
        train_data = {"people": str(lfw / "peopleDevTrain.txt"), "sets": None, "exclude_sets": None}
        model = train_head(config, train_data, head, run_dir / "view1" / name, device)
        scores = score_pairs(model, outputs, pairs, device, config.test.flip)
        labelled = [*head_scores(name, scores), *([("cos", "cos")] if name == "xcos" else [])]
        for label, key in labelled:
            result = kfold_accuracy(scores[key], dev_test.labels, dev_test.folds)
            results[label] = {"accuracy": result.accuracy, "accuracy_std": result.accuracy_std}
    return results


def head_scores(name: str, scores: dict[str, np.ndarray]) -> list[tuple[str, str]]:
    """(label, score key) of a head's results: its xCos, and with ``model.calibrate`` (where
    xCos is the recognizer's cosine) its own weighted sum as ``<name>_head``."""
    return [(name, "xcos"), *([(f"{name}_head", "head_xcos")] if "head_xcos" in scores else [])]


def train_head(
    config: Config,
    train_data: dict[str, Any],
    head: dict[str, Any],
    run_dir: Path,
    device: torch.device,
) -> XCosModel:
    """Train one head with ``config``, its training people and head settings replaced."""
    raw = copy.deepcopy(config.raw)
    raw["data"]["train"] = {**raw["data"]["train"], **train_data}
    raw["model"]["head"] = {**raw["model"]["head"], **head}
    raw["validation"] = {"pair_sets": []}  # the protocol scores the held-out fold itself
    trainer = Trainer(load_config(raw), run_dir, device)
    (run_dir / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
    trainer.fit()
    return trainer.model


def score_pairs(
    model: XCosModel,
    outputs: dict[str, torch.Tensor],
    pairs: np.ndarray,
    device: torch.device,
    flip: bool,
) -> dict[str, np.ndarray]:
    """Scores of pairs of store indices from the store's cached backbone outputs."""
    used = np.unique(pairs)
    subset = {key: value[torch.from_numpy(used)] for key, value in outputs.items()}
    model.eval()
    faces = describe_outputs(model, subset, device, flip)
    return compare_pairs(model, faces, np.searchsorted(used, pairs), device)


def format_results(results: dict[str, Any]) -> str:
    """The protocol's results as a small text table (accuracy in %, mean ± std over folds)."""
    lines = [f"{'score':<14}{'View 2 (10-fold)':>20}{'View 1 (dev test)':>20}"]
    view1 = results.get("view1", {})
    for name in results["view2"]:
        view2 = results["view2"][name]
        second = (
            f"{view1[name]['accuracy'] * 100:.2f} ± {view1[name]['accuracy_std'] * 100:.2f}"
            if name in view1
            else "-"
        )
        first = f"{view2['accuracy'] * 100:.2f} ± {view2['accuracy_std'] * 100:.2f}"
        lines.append(f"{name:<14}{first:>20}{second:>20}")
    return "\n".join(lines)
