"""ROC metrics on (score, label) arrays: AUC, equal error rate and TAR at fixed FARs.

Conventions (shared by every function here, and the same as scikit-learn's ``roc_curve``):

* ``labels`` are 1 for genuine ("same") pairs and 0 for impostor ("different") pairs; a higher
  score means "more alike".
* A pair is accepted at threshold ``t`` when ``score >= t``. The false accept rate is
  ``FAR(t) = #{negatives with score >= t} / #negatives``, the true accept rate is
  ``TAR(t) = #{positives with score >= t} / #positives`` and the false reject rate is
  ``FRR(t) = 1 - TAR(t)``. (``verification.py`` predicts "same" when ``score > threshold``;
  for the thresholds reported here, which are actual scores, use ``>=``.)
* The ROC operating points are the (FAR, TAR) pairs of every distinct score used as threshold,
  plus (0, 0) for a threshold above every score.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from sklearn.metrics import auc as trapezoid_area
from sklearn.metrics import roc_auc_score, roc_curve

from xcos.registry import METRICS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DEFAULT_FARS: tuple[float, ...] = (1e-1, 1e-2, 1e-3)
# Relative tolerance when comparing a FAR (a ratio of counts) to a target such as 1e-2, so that
# 3 false accepts out of 300 negatives count as FAR <= 1e-2 despite floating point rounding.
_FAR_RTOL = 1e-9
# FAR axis of ``roc_figure``.
FAR_AXIS_LIMITS = (1e-4, 1.0)


def check_scores_labels(
    scores: np.ndarray, labels: np.ndarray, both_classes: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Validated copies: ``scores`` as float64 [N] and ``labels`` as bool [N].

    Raises ValueError for arrays that are not 1-D or differ in shape, no pairs, labels other than
    0/1, non-finite scores, or (with ``both_classes``) only one class present.
    """
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    if scores.ndim != 1 or labels.ndim != 1 or scores.shape != labels.shape:
        raise ValueError(
            f"scores and labels must be 1-D arrays of the same length, "
            f"got shapes {scores.shape} and {labels.shape}"
        )
    if scores.size == 0:
        raise ValueError("ROC metrics need at least one pair, got empty arrays")
    try:
        scores = scores.astype(np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"scores must be numbers, got dtype {scores.dtype}") from error
    bad = ~np.isfinite(scores)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"scores must be finite: {int(bad.sum())} of {scores.size} are NaN or infinite "
            f"(first at index {first}: {scores[first]})"
        )
    if labels.dtype.kind not in "biuf":
        raise ValueError(f"labels must be 0 or 1, got dtype {labels.dtype}")
    valid = (labels == 0) | (labels == 1)
    if not valid.all():
        wrong = np.unique(labels[~valid])
        raise ValueError(f"labels must be 0 or 1, got other values {wrong[:5].tolist()}")
    labels = labels == 1
    positives = int(labels.sum())
    negatives = labels.size - positives
    if both_classes and (positives == 0 or negatives == 0):
        raise ValueError(
            f"ROC metrics need both classes, got {positives} positive (label 1) and "
            f"{negatives} negative (label 0) pairs"
        )
    return scores, labels


def check_fars(fars: Sequence[float]) -> tuple[float, ...]:
    """``fars`` as floats; each must lie in (0, 1] and appear once."""
    values = tuple(float(far) for far in fars)
    if not values:
        raise ValueError("fars must name at least one target false accept rate")
    for far in values:
        if not 0.0 < far <= 1.0:
            raise ValueError(f"each target FAR must lie in (0, 1], got {far}")
    if len({far_key(far) for far in values}) != len(values):
        raise ValueError(f"target FARs must be distinct, got {list(values)}")
    return values


def far_key(far: float) -> str:
    """Dictionary key of a target FAR: scientific notation, two-digit exponent.

    The mantissa has as few digits as still give back ``far`` exactly with ``float(key)``:
    1e-3 -> "1e-03", 0.1 -> "1e-01", 5e-4 -> "5e-04", 0.25 -> "2.5e-01", 1.0 -> "1e+00".
    """
    far = float(far)
    for digits in range(17):
        key = f"{far:.{digits}e}"
        if float(key) == far:
            return key
    return repr(far)  # unreachable for finite floats: 17 significant digits always round-trip


def _curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(far, tar, thresholds) at every distinct score, highest threshold first, from (0, 0).

    ``thresholds[0]`` is +inf (accept nothing).
    """
    far, tar, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    return far, tar, thresholds


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: the probability that a random positive pair scores above a
    random negative pair, ties counting one half."""
    scores, labels = check_scores_labels(scores, labels)
    return float(roc_auc_score(labels, scores))


def _eer(far: np.ndarray, tar: np.ndarray, thresholds: np.ndarray) -> tuple[float, float]:
    # FRR - FAR strictly decreases along the curve (each step accepts at least one more pair),
    # from 1 at (0, 0) to -1 at (1, 1): find the segment where it changes sign.
    gap = (1.0 - tar) - far
    i = int(np.argmax(gap <= 0.0))  # first point at or past the crossing; i >= 1 as gap[0] = 1
    if gap[i] == 0.0:
        return float(far[i]), float(thresholds[i])
    alpha = gap[i - 1] / (gap[i - 1] - gap[i])
    eer = far[i - 1] + alpha * (far[i] - far[i - 1])
    # The (0, 0) point has threshold +inf: stand in the highest score for it.
    upper = thresholds[i - 1] if i > 1 else thresholds[1]
    threshold = upper + alpha * (thresholds[i] - upper)
    return float(eer), float(threshold)


def equal_error_rate(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(EER, threshold) where the false accept rate equals the false reject rate.

    The ROC operating points are joined by straight lines (FAR and FRR both linear along each
    segment, as for a random mix of the two neighbouring thresholds) and the EER is read where
    FAR == FRR on that polyline, so it is exact even when no single threshold balances them.
    The threshold is interpolated linearly between the two neighbouring thresholds with the same
    weight (the highest score stands in for the "accept nothing" point's +inf); when an
    operating point balances FAR and FRR exactly, its own threshold (a score, accepted with
    ``>=``) is returned, e.g. the lowest positive score for separable data (EER 0).
    """
    scores, labels = check_scores_labels(scores, labels)
    return _eer(*_curve(scores, labels))


def _tar_at_far(far: np.ndarray, tar: np.ndarray, targets: Sequence[float]) -> dict[str, float]:
    result = {}
    for target in targets:
        # ``far`` starts at 0, so at least the "accept nothing" point always qualifies.
        allowed = far <= target * (1.0 + _FAR_RTOL)
        result[far_key(target)] = float(tar[allowed].max())
    return result


def tar_at_far(
    scores: np.ndarray, labels: np.ndarray, fars: Sequence[float] = DEFAULT_FARS
) -> dict[str, float]:
    """True accept rate at each target false accept rate, keyed by ``far_key(far)``.

    For each target, the operating threshold is the lowest one whose FAR does not exceed the
    target (so, of all thresholds with FAR <= target, the one with the highest TAR), and TAR is
    measured exactly there; no interpolation or extrapolation. With few negatives the allowed
    number of false accepts is ``floor(target * #negatives)``: e.g. 1e-3 with 300 negatives
    allows none, so TAR is the fraction of positives scoring strictly above every negative.
    """
    scores, labels = check_scores_labels(scores, labels)
    targets = check_fars(fars)
    far, tar, _ = _curve(scores, labels)
    return _tar_at_far(far, tar, targets)


def roc_points(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(far, tar) of the ROC corners, FAR ascending and starting at (0, 0), for ``roc_figure``.

    Points on a straight line between two corners are dropped; the curve is unchanged.
    """
    scores, labels = check_scores_labels(scores, labels)
    far, tar, _ = roc_curve(labels, scores, drop_intermediate=True)
    return far, tar


def roc_figure(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], title: str) -> Figure:
    """ROC curves, one line per name (e.g. "xcos", "cos") with its AUC in the legend.

    ``curves[name]`` is ``(far, tar)`` as from ``roc_points``. FAR is on a log x axis from 1e-4
    to 1, TAR on y. Points with FAR 0 are drawn just left of the axis so that the curve enters
    from the left edge. Built on ``matplotlib.figure.Figure`` (no pyplot state); save it with
    ``fig.savefig(path)``.
    """
    from matplotlib.figure import Figure

    if not curves:
        raise ValueError("roc_figure needs at least one curve")
    left, right = FAR_AXIS_LIMITS
    fig = Figure(figsize=(5.5, 4.5), layout="constrained")
    axes = fig.add_subplot()
    for name, (far, tar) in curves.items():
        far = np.asarray(far, dtype=np.float64)
        tar = np.asarray(tar, dtype=np.float64)
        if far.ndim != 1 or far.shape != tar.shape or far.size < 2:
            raise ValueError(
                f"curve {name!r}: far and tar must be 1-D arrays of the same length (>= 2), "
                f"got shapes {far.shape} and {tar.shape}"
            )
        area = trapezoid_area(far, tar)
        axes.plot(np.where(far > 0, far, left / 10), tar, label=f"{name} (AUC {area:.4f})")
    axes.set_xscale("log")
    axes.set_xlim(left, right)
    axes.set_ylim(0.0, 1.01)
    axes.set_xlabel("False accept rate (FAR)")
    axes.set_ylabel("True accept rate (TAR)")
    axes.set_title(title)
    axes.grid(True, which="major", alpha=0.4)
    axes.grid(True, which="minor", alpha=0.15)
    axes.legend(loc="lower right")
    return fig


@METRICS.register("roc")
class RocMetrics:
    """Streaming ROC metrics: ``reset`` / ``update`` / ``compute``.

    ``compute`` returns ``{"auc", "eer", "eer_threshold", "tar_at_far": {far_key: tar}}``
    over every pair given to ``update`` since the last ``reset``.

    Args:
        fars: target false accept rates for ``tar_at_far`` (default 1e-1, 1e-2, 1e-3).
    """

    def __init__(self, fars: list[float] | None = None) -> None:
        self.fars = check_fars(DEFAULT_FARS if fars is None else fars)
        self.reset()

    def reset(self) -> None:
        self._scores: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []

    def update(
        self, scores: np.ndarray, labels: np.ndarray, folds: np.ndarray | None = None
    ) -> None:
        """Add pairs; ``folds`` is accepted for the metric interface and ignored."""
        scores = np.asarray(scores).ravel()
        labels = np.asarray(labels).ravel()
        if scores.shape != labels.shape:
            raise ValueError(f"scores and labels differ in size: {scores.size} and {labels.size}")
        if scores.size == 0:
            return
        # Both classes are only needed over all updates together, checked by ``compute``.
        scores, labels = check_scores_labels(scores, labels, both_classes=False)
        self._scores.append(scores)
        self._labels.append(labels)

    def compute(self) -> dict[str, float | dict[str, float]]:
        if not self._scores:
            raise ValueError("RocMetrics.compute called before any update")
        scores, labels = check_scores_labels(
            np.concatenate(self._scores), np.concatenate(self._labels)
        )
        far, tar, thresholds = _curve(scores, labels)
        eer, eer_threshold = _eer(far, tar, thresholds)
        return {
            "auc": float(roc_auc_score(labels, scores)),
            "eer": eer,
            "eer_threshold": eer_threshold,
            "tar_at_far": _tar_at_far(far, tar, self.fars),
        }
