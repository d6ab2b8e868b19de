"""Verification metrics on (score, label) arrays: the k-fold accuracy protocol of LFW.

For each fold, the threshold that maximises accuracy on the other folds is chosen exactly among
all midpoints between consecutive distinct scores (plus one below and one above the range), and
accuracy is measured on the held-out fold. A pair is predicted "same" when score > threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xcos.data.folds import contiguous_folds
from xcos.registry import METRICS


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(threshold, accuracy) maximising accuracy of ``scores > threshold`` on these pairs.

    Exact over all midpoints in O(n log n); ties go to the lowest threshold.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    if scores.size == 0:
        raise ValueError("best_threshold needs at least one score")
    distinct = np.unique(scores)
    candidates = np.concatenate(
        [[distinct[0] - 1.0], (distinct[:-1] + distinct[1:]) / 2.0, [distinct[-1] + 1.0]]
    )
    # For threshold t: correct = positives above t + negatives at or below t.
    order = np.sort(scores[labels])
    negatives = np.sort(scores[~labels])
    positives_above = labels.sum() - np.searchsorted(order, candidates, side="right")
    negatives_below = np.searchsorted(negatives, candidates, side="right")
    correct = positives_above + negatives_below
    best = int(np.argmax(correct))
    return float(candidates[best]), float(correct[best] / scores.size)


@dataclass
class FoldResult:
    accuracy: float
    accuracy_std: float
    threshold: float
    fold_accuracies: list[float]
    fold_thresholds: list[float]

    def as_dict(self) -> dict[str, float | list[float]]:
        return {
            "accuracy": self.accuracy,
            "accuracy_std": self.accuracy_std,
            "threshold": self.threshold,
            "fold_accuracies": self.fold_accuracies,
            "fold_thresholds": self.fold_thresholds,
        }


def held_out_accuracy(
    scores: np.ndarray, labels: np.ndarray, held_out: np.ndarray
) -> tuple[float, float]:
    """(accuracy on the ``held_out`` pairs, threshold chosen on all the others).

    Scores are compared in float64, like the threshold: a float32 score next to a midpoint
    threshold would otherwise be compared with the threshold rounded to float32.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    threshold, _ = best_threshold(scores[~held_out], labels[~held_out])
    predicted = scores[held_out] > threshold
    return float((predicted == labels[held_out]).mean()), threshold


def kfold_accuracy(scores: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> FoldResult:
    """Mean/std accuracy over folds, each fold's threshold chosen on the other folds.

    ``threshold`` is the mean of the per-fold thresholds.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    folds = np.asarray(folds)
    if not (scores.shape == labels.shape == folds.shape):
        raise ValueError(
            f"scores {scores.shape}, labels {labels.shape} and folds {folds.shape} differ in shape"
        )
    fold_ids = np.unique(folds)
    if fold_ids.size < 2:
        raise ValueError("k-fold accuracy needs at least 2 folds")
    accuracies, thresholds = [], []
    for fold in fold_ids:
        accuracy, threshold = held_out_accuracy(scores, labels, folds == fold)
        accuracies.append(accuracy)
        thresholds.append(threshold)
    return FoldResult(
        accuracy=float(np.mean(accuracies)),
        accuracy_std=float(np.std(accuracies)),
        threshold=float(np.mean(thresholds)),
        fold_accuracies=accuracies,
        fold_thresholds=thresholds,
    )


@METRICS.register("verification_accuracy")
class VerificationAccuracy:
    """Streaming k-fold verification accuracy: ``reset`` / ``update`` / ``compute``.

    Args:
        folds: number of contiguous folds used when ``update`` gets no fold ids.
    """

    def __init__(self, folds: int = 10) -> None:
        self.folds = folds
        self.reset()

    def reset(self) -> None:
        self._scores: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._fold_ids: list[np.ndarray] = []

    def update(
        self, scores: np.ndarray, labels: np.ndarray, folds: np.ndarray | None = None
    ) -> None:
        self._scores.append(np.asarray(scores, dtype=np.float64).ravel())
        self._labels.append(np.asarray(labels).ravel())
        if folds is not None:
            self._fold_ids.append(np.asarray(folds).ravel())

    def compute(self) -> dict[str, float | list[float]]:
        scores = np.concatenate(self._scores)
        labels = np.concatenate(self._labels)
        if self._fold_ids:
            folds = np.concatenate(self._fold_ids)
            if folds.shape != scores.shape:
                raise ValueError("fold ids were given for some updates only")
        else:
            folds = contiguous_folds(scores.size, self.folds)
        return kfold_accuracy(scores, labels, folds).as_dict()
