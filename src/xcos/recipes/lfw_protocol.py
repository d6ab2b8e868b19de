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
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xcos.config import Config, load_config
from xcos.data.lfw import read_lfw
from xcos.data.lfw_people import LFWFaceStore
from xcos.engine.features import cached_backbone_outputs
from xcos.engine.trainer import Trainer
from xcos.errors import ConfigError
from xcos.evaluation.evaluator import compare_pairs, describe_outputs
from xcos.evaluation.verification import held_out_accuracy, kfold_accuracy
from xcos.io_utils import atomic_save_json
from xcos.models.xcos_model import XCosModel, build_model
from xcos.progress import progress
from xcos.runtime import steady_heap

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
    workers: int | None = None,
) -> dict[str, Any]:
    """Run the protocol; writes ``results.json`` into ``run_dir`` and returns it.

    ``workers`` heads train side by side in processes of their own (default: one per CPU
    core on a CPU, one on a GPU); each head's training is seeded alike either way.
    """
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
    steady_heap()  # the dlib pass and the scoring reuse freed buffers (the heads: Trainer)
    align = dict(train.get("align") or {})
    store = LFWFaceStore(lfw / "images", align, "data.train.align")
    model = build_model(config.model).to(device)
    outputs = cached_backbone_outputs(
        model, store.face, len(store), store.cache_key, device, flip=config.test.flip
    )
    results: dict[str, Any] = {"config": config.name, "folds": list(folds)}
    jobs = {
        (fold, name): HeadJob(
            config.raw, lfw_people(lfw, "people.txt", exclude=fold), head, fold_dir(run_dir, fold)
        )
        for fold in folds
        for name, head in VARIANTS.items()
    }
    if view1:
        jobs |= {
            ("view1", name): HeadJob(
                config.raw, lfw_people(lfw, "peopleDevTrain.txt"), head, run_dir / "view1"
            )
            for name, head in VARIANTS.items()
        }
    heads = train_heads(jobs, config, device, workers)
    view2 = read_lfw(str(lfw / "pairs.txt"))
    view2_pairs = store.indices(list(view2.images), "pairs.txt")[view2.pairs]
    results["view2"] = view2_results(
        config, heads, device, outputs, view2_pairs, view2.labels, view2.folds, folds
    )
    if view1:
        results["view1"] = view1_results(config, heads, lfw, device, outputs, store)
    atomic_save_json(results, run_dir / "results.json", indent=2)
    return results


def view2_results(
    config: Config,
    heads: dict[tuple[Any, str], XCosModel],
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
        for name in VARIANTS:
            scores = score_pairs(heads[fold, name], outputs, pairs, device, config.test.flip)
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
    heads: dict[tuple[Any, str], XCosModel],
    lfw: Path,
    device: torch.device,
    outputs: dict[str, torch.Tensor],
    store: LFWFaceStore,
) -> dict[str, Any]:
    """View 1: heads trained on peopleDevTrain, 10-fold accuracy on pairsDevTest."""
    dev_test = read_lfw(str(lfw / "pairsDevTest.txt"))
    pairs = store.indices(list(dev_test.images), "pairsDevTest.txt")[dev_test.pairs]
    results = {}
    for name in VARIANTS:
        scores = score_pairs(heads["view1", name], outputs, pairs, device, config.test.flip)
        labelled = [*head_scores(name, scores), *([("cos", "cos")] if name == "xcos" else [])]
        for label, key in labelled:
            result = kfold_accuracy(scores[key], dev_test.labels, dev_test.folds)
            results[label] = {"accuracy": result.accuracy, "accuracy_std": result.accuracy_std}
    return results


def head_scores(name: str, scores: dict[str, np.ndarray]) -> list[tuple[str, str]]:
    """(label, score key) of a head's results: its xCos, and with ``model.calibrate`` (where
    xCos is the recognizer's cosine) its own weighted sum as ``<name>_head``."""
    return [(name, "xcos"), *([(f"{name}_head", "head_xcos")] if "head_xcos" in scores else [])]


def lfw_people(lfw: Path, people: str, exclude: int | None = None) -> dict[str, Any]:
    """The training data settings of a head: LFW people of ``people``, set ``exclude`` left out."""
    return {
        "people": str(lfw / people),
        "sets": None,
        "exclude_sets": [exclude] if exclude else None,
    }


def fold_dir(run_dir: Path, fold: int) -> Path:
    return run_dir / f"fold{fold:02d}"


@dataclass(frozen=True)
class HeadJob:
    """One head to train: the run config (a dict), its training people and head settings, and
    the folder its run goes to (``<folder>/<head name>``)."""

    raw: dict[str, Any]
    train_data: dict[str, Any]
    head: dict[str, Any]
    folder: Path


def train_heads(
    jobs: dict[tuple[Any, str], HeadJob],
    config: Config,
    device: torch.device,
    workers: int | None = None,
) -> dict[tuple[Any, str], XCosModel]:
    """Every job's trained model. On a CPU, ``workers`` processes (default: one per core)
    train heads side by side, each with an equal share of the cores: a small head's steps
    use two cores better as two trainings than as one with two threads per operation."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    workers = (cores if device.type == "cpu" else 1) if workers is None else workers
    workers = max(1, min(workers, len(jobs)))
    states: dict[tuple[Any, str], dict[str, torch.Tensor]] = {}
    with progress(len(jobs), "train heads", "head", log) as bar:
        if workers == 1:
            for key, job in jobs.items():
                states[key] = train_head(job, key[1], str(device))
                log.info("trained %s head of %s", key[1], key[0])
                bar.update()
        else:
            threads = max(1, cores // workers)
            context = multiprocessing.get_context("spawn")  # no fork of a threaded parent
            with ProcessPoolExecutor(
                workers, context, initializer=torch.set_num_threads, initargs=(threads,)
            ) as pool:
                futures = {
                    pool.submit(train_head, job, key[1], str(device), True): key
                    for key, job in jobs.items()
                }
                for future in as_completed(futures):
                    states[futures[future]] = future.result()
                    log.info("trained %s head of %s", futures[future][1], futures[future][0])
                    bar.update()
    models: dict[tuple[Any, str], XCosModel] = {}
    built: dict[str, XCosModel] = {}  # building reads the recognizer's weights: once per head
    for key, job in jobs.items():
        model_raw = job_raw(job)["model"]
        text = json.dumps(model_raw, sort_keys=True)
        if text not in built:
            built[text] = build_model(load_config(job_raw(job)).model)
        model = copy.deepcopy(built[text])
        model.load_state_dict(states[key])
        models[key] = model.to(device)
    return models


def job_raw(job: HeadJob, quiet: bool = False) -> dict[str, Any]:
    """The run config (a dict) of a head's training."""
    raw = copy.deepcopy(job.raw)
    raw["data"]["train"] = {**raw["data"]["train"], **job.train_data}
    raw["model"]["head"] = {**raw["model"]["head"], **job.head}
    raw["validation"] = {"pair_sets": []}  # the protocol scores the held-out fold itself
    if quiet:
        raw["trainer"] = {**raw.get("trainer", {}), "progress_bar": False}
    return raw


def train_head(
    job: HeadJob, name: str, device: str, quiet: bool = False
) -> dict[str, torch.Tensor]:
    """Train one head; returns its model's state dict (on the CPU). ``quiet``: no progress
    bar (heads training side by side would draw over each other)."""
    raw = job_raw(job, quiet)
    run_dir = job.folder / name
    trainer = Trainer(load_config(raw), run_dir, torch.device(device))
    atomic_save_json(raw, run_dir / "config.json", indent=2)
    trainer.fit()
    return {key: value.cpu() for key, value in trainer.model.state_dict().items()}


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
    descriptors = describe_outputs(model, subset, device, flip)
    return compare_pairs(model, descriptors, np.searchsorted(used, pairs), device)


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
