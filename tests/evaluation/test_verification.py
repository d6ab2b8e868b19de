"""k-fold verification accuracy against independent computations."""

import numpy as np
import pytest
from sklearn.model_selection import KFold

from xcos.evaluation.verification import (
    VerificationAccuracy,
    best_threshold,
    contiguous_folds,
    held_out_accuracy,
    kfold_accuracy,
)


def brute_force_threshold(scores, labels):
    """Try every midpoint in ascending order; first maximum wins (same tie rule)."""
    values = np.unique(scores)
    candidates = np.concatenate([[values[0] - 1], (values[:-1] + values[1:]) / 2, [values[-1] + 1]])
    accuracies = [((scores > t) == labels).mean() for t in candidates]
    best = int(np.argmax(accuracies))
    return candidates[best], accuracies[best]


def synthetic_scores(n=600, seed=0, ties=False):
    rng = np.random.default_rng(seed)
    labels = np.repeat([1, 0], n // 2)
    scores = np.where(labels == 1, rng.normal(0.5, 0.2, n), rng.normal(0.1, 0.2, n))
    if ties:
        scores = np.round(scores, 1)
    return scores, labels


@pytest.mark.parametrize("ties", [False, True])
def test_best_threshold_matches_brute_force(ties):
    for seed in range(5):
        scores, labels = synthetic_scores(200, seed, ties)
        threshold, accuracy = best_threshold(scores, labels.astype(bool))
        expected_t, expected_acc = brute_force_threshold(scores, labels.astype(bool))
        assert threshold == pytest.approx(expected_t)
        assert accuracy == pytest.approx(expected_acc)


def test_threshold_separates_perfectly():
    threshold, accuracy = best_threshold(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1]))
    assert accuracy == 1.0
    assert 0.2 < threshold < 0.8
    assert threshold == pytest.approx(0.5)


def test_kfold_equals_sklearn_kfold_computation():
    """LFW protocol: 10 contiguous folds (KFold without shuffle), threshold from the other 9."""
    scores, labels = synthetic_scores(6000, seed=1)
    # Interleave labels inside folds as in pairs.txt: 300 same then 300 different per fold.
    order = np.concatenate(
        [
            np.r_[np.arange(k * 300, (k + 1) * 300), 3000 + np.arange(k * 300, (k + 1) * 300)]
            for k in range(10)
        ]
    )
    scores, labels = scores[order], labels[order]
    expected = []
    for train, test in KFold(n_splits=10, shuffle=False).split(scores):
        threshold, _ = brute_force_threshold(scores[train], labels[train].astype(bool))
        expected.append(((scores[test] > threshold) == labels[test]).mean())
    result = kfold_accuracy(scores, labels, contiguous_folds(6000, 10))
    assert result.fold_accuracies == pytest.approx(expected)
    assert result.accuracy == pytest.approx(np.mean(expected))
    assert result.accuracy_std == pytest.approx(np.std(expected))
    assert 0.8 < result.accuracy < 0.95


def test_streaming_metric_and_fold_ids():
    scores, labels = synthetic_scores(400, seed=2)
    folds = contiguous_folds(400, 10)
    metric = VerificationAccuracy(folds=10)
    metric.update(scores[:150], labels[:150])
    metric.update(scores[150:], labels[150:])
    streamed = metric.compute()
    assert streamed["accuracy"] == pytest.approx(kfold_accuracy(scores, labels, folds).accuracy)
    metric.reset()
    metric.update(scores, labels, folds)
    assert metric.compute()["accuracy"] == streamed["accuracy"]
    assert len(streamed["fold_thresholds"]) == 10


def test_bad_inputs():
    with pytest.raises(ValueError, match="differ in shape"):
        kfold_accuracy(np.zeros(10), np.zeros(9), np.zeros(10))
    with pytest.raises(ValueError, match="at least 2 folds"):
        kfold_accuracy(np.zeros(10), np.zeros(10), np.zeros(10))
    with pytest.raises(ValueError, match="cannot be split"):
        contiguous_folds(5, 10)


def test_held_out_scores_are_compared_in_float64():
    """float32 scores either side of a midpoint threshold land on the right side of it."""
    low = np.float32(0.1)
    high = np.nextafter(low, np.float32(1))
    scores = np.array([low, high, low, high], dtype=np.float32)
    labels = np.array([0, 1, 0, 1])
    held_out = np.array([False, False, True, True])
    accuracy, threshold = held_out_accuracy(scores, labels, held_out)
    assert float(low) < threshold < float(high)
    assert accuracy == 1.0
