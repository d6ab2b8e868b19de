"""ROC metrics (AUC, EER, TAR@FAR) against brute-force computations, and the ROC figure."""

from fractions import Fraction

import numpy as np
import pytest

from xcos.errors import ConfigError
from xcos.evaluation.roc import (
    RocMetrics,
    equal_error_rate,
    far_key,
    roc_auc,
    roc_figure,
    roc_points,
    tar_at_far,
)
from xcos.registry import METRICS

VERIFICATION_KEYS = {"accuracy", "accuracy_std", "threshold", "fold_accuracies", "fold_thresholds"}


def random_pairs(positives=300, negatives=300, seed=0, ties=False):
    """Overlapping genuine/impostor scores, shuffled; ``ties`` rounds them to share values."""
    rng = np.random.default_rng(seed)
    scores = np.r_[rng.normal(0.6, 0.25, positives), rng.normal(0.2, 0.25, negatives)]
    labels = np.r_[np.ones(positives, int), np.zeros(negatives, int)]
    if ties:
        scores = np.round(scores, 1)
    order = rng.permutation(scores.size)
    return scores[order], labels[order]


def brute_auc(scores, labels):
    """Fraction of (positive, negative) pairs ranked correctly, ties counting 1/2."""
    pos, neg = scores[labels == 1][:, None], scores[labels == 0][None, :]
    return float(np.mean((pos > neg) + 0.5 * (pos == neg)))


def brute_tar_at_far(scores, labels, far):
    """Sweep every threshold (accept score >= t); best TAR with #false accepts <= far * #neg.

    ``far`` is compared as an exact fraction of integer counts, free of rounding.
    """
    pos, neg = scores[labels == 1], scores[labels == 0]
    target = Fraction(far).limit_denominator(10**9)
    best = 0.0
    for t in [np.inf, *np.unique(scores)]:
        false_accepts = int((neg >= t).sum())
        if false_accepts * target.denominator <= target.numerator * neg.size:
            best = max(best, float((pos >= t).mean()))
    return best


def rates(scores, labels, threshold):
    """(FAR, FRR) when accepting score >= threshold."""
    accepted = scores >= threshold
    return float(accepted[labels == 0].mean()), float(1 - accepted[labels == 1].mean())


# --- AUC ---


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_auc_equals_pairwise_ranking(seed, ties):
    scores, labels = random_pairs(200, 150, seed, ties)
    assert roc_auc(scores, labels) == pytest.approx(brute_auc(scores, labels), abs=1e-12)


def test_auc_extremes():
    labels = np.array([0, 0, 1, 1])
    assert roc_auc(np.array([0.1, 0.2, 0.8, 0.9]), labels) == 1.0
    assert roc_auc(np.array([0.9, 0.8, 0.2, 0.1]), labels) == 0.0
    assert roc_auc(np.full(4, 0.3), labels) == 0.5


# --- EER ---


def test_eer_hand_made_exact_crossing():
    # Thresholds 0.9, 0.8, 0.7, 0.6: (FAR, FRR) = (0, .75), (0, .5), (.25, .5), (.25, .25).
    scores = np.array([0.4, 0.6, 0.8, 0.9, 0.1, 0.3, 0.5, 0.7])
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    eer, threshold = equal_error_rate(scores, labels)
    assert eer == pytest.approx(0.25)
    assert threshold == pytest.approx(0.6)
    assert rates(scores, labels, threshold) == pytest.approx((0.25, 0.25))


def test_eer_hand_made_interpolated_crossing():
    # At 0.8: FAR 0, FRR 1/3; at 0.7: FAR 1/2, FRR 1/3. FRR - FAR goes 1/3 -> -1/6, so the
    # crossing is 2/3 of the way along that segment: FAR = FRR = 1/3 at threshold 0.8 - 0.1 * 2/3.
    scores = np.array([0.6, 0.8, 0.9, 0.1, 0.7])
    labels = np.array([1, 1, 1, 0, 0])
    eer, threshold = equal_error_rate(scores, labels)
    assert eer == pytest.approx(1 / 3)
    assert threshold == pytest.approx(0.8 - 0.1 * 2 / 3)


def test_eer_separable_is_zero():
    scores, labels = random_pairs(100, 100, seed=1)
    scores = scores + 2.0 * labels  # every positive above every negative
    eer, threshold = equal_error_rate(scores, labels)
    assert eer == 0.0
    assert threshold == scores[labels == 1].min()
    assert rates(scores, labels, threshold) == (0.0, 0.0)


def test_eer_degenerate_rankings():
    labels = np.array([1, 1, 0, 0])
    assert equal_error_rate(np.full(4, 0.3), labels) == pytest.approx((0.5, 0.3))
    eer, _ = equal_error_rate(np.array([0.1, 0.2, 0.8, 0.9]), labels)  # inverted ranking
    assert eer == pytest.approx(1.0)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_eer_brackets_every_threshold(seed, ties):
    """No threshold does better than the EER on its worse side, nor worse on its better side."""
    scores, labels = random_pairs(150, 250, seed, ties)
    eer, threshold = equal_error_rate(scores, labels)
    pairs = [rates(scores, labels, t) for t in [np.inf, *np.unique(scores)]]
    assert max(min(p) for p in pairs) - 1e-12 <= eer <= min(max(p) for p in pairs) + 1e-12
    assert scores.min() <= threshold <= scores.max()
    # The EER lies between the operating points of the two scores around its threshold.
    at_or_below = scores[scores <= threshold].max()
    above = scores[scores > threshold].min(initial=np.inf)
    far_low, frr_low = rates(scores, labels, at_or_below)
    far_high, frr_high = rates(scores, labels, above)
    assert far_high - 1e-12 <= eer <= far_low + 1e-12
    assert frr_low - 1e-12 <= eer <= frr_high + 1e-12


# --- TAR @ FAR ---


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize(("positives", "negatives"), [(300, 300), (400, 1000), (50, 2345)])
def test_tar_at_far_matches_threshold_sweep(positives, negatives, ties):
    fars = (0.5, 1e-1, 1e-2, 3e-3, 1e-3)
    for seed in range(3):
        scores, labels = random_pairs(positives, negatives, seed, ties)
        result = tar_at_far(scores, labels, fars)
        assert list(result) == [far_key(far) for far in fars]
        for far in fars:
            expected = brute_tar_at_far(scores, labels, far)
            assert result[far_key(far)] == pytest.approx(expected, abs=1e-12), (far, seed)


def test_tar_at_far_too_few_negatives_allows_no_false_accept():
    # 300 negatives: 1e-3 allows floor(0.3) = 0 false accepts, 1e-2 allows exactly 3.
    scores, labels = random_pairs(300, 300, seed=5)
    pos, neg = scores[labels == 1], scores[labels == 0]
    result = tar_at_far(scores, labels)
    assert set(result) == {"1e-01", "1e-02", "1e-03"}
    assert result["1e-03"] == pytest.approx(np.mean(pos > neg.max()))
    fourth_highest = np.sort(neg)[-4]  # the three above it may be accepted, not this one
    assert result["1e-02"] == pytest.approx(np.mean(pos > fourth_highest))


def test_tar_at_far_tie_with_top_negative_is_rejected():
    scores = np.array([0.9, 0.5, 0.5, 0.1])
    labels = np.array([1, 1, 0, 0])
    # Accepting the positive at 0.5 would accept the negative tied with it (FAR 1/2).
    assert tar_at_far(scores, labels, [0.1, 0.5]) == {"1e-01": 0.5, "5e-01": 1.0}


def test_tar_at_far_separable_and_inverted():
    labels = np.array([1, 1, 0, 0])
    assert tar_at_far(np.array([0.8, 0.9, 0.1, 0.2]), labels, [1e-3]) == {"1e-03": 1.0}
    assert tar_at_far(np.array([0.1, 0.2, 0.8, 0.9]), labels, [1e-3]) == {"1e-03": 0.0}


def test_far_key_format():
    assert [far_key(f) for f in (1e-1, 1e-2, 1e-3, 1e-4)] == ["1e-01", "1e-02", "1e-03", "1e-04"]
    assert far_key(5e-4) == "5e-04"
    assert far_key(0.25) == "2.5e-01"
    assert far_key(1) == "1e+00"
    for far in (1e-3, 0.25, 1 / 3, 0.123456789):
        assert float(far_key(far)) == far


@pytest.mark.parametrize(
    ("fars", "message"),
    [
        ([], "at least one"),
        ([0.0], r"\(0, 1\]"),
        ([1.5], r"\(0, 1\]"),
        ([-1e-3], r"\(0, 1\]"),
        ([float("nan")], r"\(0, 1\]"),
        ([1e-2, 0.01], "distinct"),
    ],
)
def test_bad_fars_raise(fars, message):
    scores, labels = random_pairs(20, 20)
    with pytest.raises(ValueError, match=message):
        tar_at_far(scores, labels, fars)
    with pytest.raises(ValueError, match=message):
        RocMetrics(fars=fars)


# --- bad inputs ---

GOOD_SCORES = np.array([0.1, 0.4, 0.35, 0.8])
GOOD_LABELS = np.array([0, 0, 1, 1])

BAD_INPUTS = [
    (GOOD_SCORES, GOOD_LABELS[:3], "same length"),
    (GOOD_SCORES.reshape(2, 2), GOOD_LABELS.reshape(2, 2), "1-D"),
    (np.array([]), np.array([]), "at least one pair"),
    (GOOD_SCORES, np.array([0, 2, 1, 1]), r"0 or 1, got other values \[2\]"),
    (GOOD_SCORES, np.array([-1, 0, 1, 1]), r"0 or 1, got other values \[-1\]"),
    (GOOD_SCORES, np.array([0, 0.5, 1, 1]), r"0 or 1, got other values \[0.5\]"),
    (GOOD_SCORES, np.array(["0", "0", "1", "1"]), "0 or 1, got dtype"),
    (GOOD_SCORES, np.array([0, np.nan, 1, 1]), "0 or 1"),
    (np.array([0.1, np.nan, 0.3, 0.8]), GOOD_LABELS, "finite: 1 of 4.*index 1"),
    (np.array([0.1, 0.2, np.inf, -np.inf]), GOOD_LABELS, "finite: 2 of 4.*index 2"),
    (np.array(["a", "b", "c", "d"]), GOOD_LABELS, "scores must be numbers"),
    (GOOD_SCORES, np.ones(4, int), "both classes, got 4 positive .* and 0 negative"),
    (GOOD_SCORES, np.zeros(4, int), "both classes, got 0 positive .* and 4 negative"),
]


@pytest.mark.parametrize(
    "function",
    [roc_auc, equal_error_rate, tar_at_far, roc_points],
    ids=lambda f: f.__name__,
)
@pytest.mark.parametrize(("scores", "labels", "message"), BAD_INPUTS)
def test_bad_inputs_raise(function, scores, labels, message):
    with pytest.raises(ValueError, match=message):
        function(scores, labels)


def test_good_inputs_in_other_dtypes():
    expected = roc_auc(GOOD_SCORES, GOOD_LABELS)
    assert roc_auc(GOOD_SCORES.astype(np.float32), GOOD_LABELS.astype(bool)) == expected
    assert roc_auc(list(GOOD_SCORES), [0.0, 0.0, 1.0, 1.0]) == expected


# --- metric class ---


def test_metric_built_from_config_and_streaming_equals_single_update():
    scores, labels = random_pairs(500, 700, seed=2, ties=True)
    whole = METRICS.build({"type": "roc"}, "m")
    assert isinstance(whole, RocMetrics)
    whole.update(scores, labels, folds=np.arange(scores.size) % 10)
    result = whole.compute()
    assert set(result) == {"auc", "eer", "eer_threshold", "tar_at_far"}
    assert not set(result) & VERIFICATION_KEYS
    assert result["auc"] == pytest.approx(roc_auc(scores, labels))
    assert (result["eer"], result["eer_threshold"]) == equal_error_rate(scores, labels)
    assert result["tar_at_far"] == tar_at_far(scores, labels)
    assert list(result["tar_at_far"]) == ["1e-01", "1e-02", "1e-03"]
    assert all(isinstance(v, float) for k, v in result.items() if k != "tar_at_far")

    streamed = METRICS.build({"type": "roc"}, "m")
    for chunk in np.array_split(np.arange(scores.size), 7):
        streamed.update(scores[chunk], labels[chunk])
    streamed.update(np.array([]), np.array([]))  # empty batches are ignored
    assert streamed.compute() == result

    streamed.reset()
    streamed.update(scores[:100], labels[:100])
    assert streamed.compute()["auc"] == pytest.approx(roc_auc(scores[:100], labels[:100]))


def test_metric_fars_from_config():
    scores, labels = random_pairs(200, 200, seed=3)
    metric = METRICS.build({"type": "roc", "fars": [0.05, 1e-2]}, "m")
    metric.update(scores, labels)
    assert metric.compute()["tar_at_far"] == tar_at_far(scores, labels, [0.05, 1e-2])
    assert list(metric.compute()["tar_at_far"]) == ["5e-02", "1e-02"]
    with pytest.raises(ConfigError, match=r"m\.fars"):
        METRICS.build({"type": "roc", "fars": 0.1}, "m")
    with pytest.raises(ConfigError, match=r"m\.far: unknown key.*fars"):
        METRICS.build({"type": "roc", "far": [0.1]}, "m")


def test_metric_classes_may_be_split_across_updates():
    metric = RocMetrics()
    metric.update(np.array([0.7, 0.9]), np.array([1, 1]))
    metric.update(np.array([0.1, 0.8]), np.array([0, 0]))
    result = metric.compute()
    assert result["auc"] == pytest.approx(0.75)
    assert result["tar_at_far"]["1e-01"] == 0.5


def test_metric_bad_inputs_raise():
    metric = RocMetrics()
    with pytest.raises(ValueError, match="before any update"):
        metric.compute()
    with pytest.raises(ValueError, match="differ in size"):
        metric.update(GOOD_SCORES, GOOD_LABELS[:3])
    with pytest.raises(ValueError, match="finite"):
        metric.update(np.array([0.1, np.nan]), np.array([0, 1]))
    with pytest.raises(ValueError, match="0 or 1"):
        metric.update(np.array([0.1, 0.2]), np.array([0, 3]))
    metric.update(np.array([0.1, 0.2]), np.array([1, 1]))  # fine until compute
    with pytest.raises(ValueError, match="both classes"):
        metric.compute()


# --- curve points and figure ---


def test_roc_points_trace_the_curve():
    scores, labels = random_pairs(300, 400, seed=4, ties=True)
    far, tar = roc_points(scores, labels)
    assert (far[0], tar[0]) == (0.0, 0.0)
    assert (far[-1], tar[-1]) == (1.0, 1.0)
    assert np.all(np.diff(far) >= 0) and np.all(np.diff(tar) >= 0)
    area = np.sum(np.diff(far) * (tar[1:] + tar[:-1]) / 2)
    assert area == pytest.approx(brute_auc(scores, labels), abs=1e-12)


def test_roc_figure(tmp_path):
    from matplotlib.figure import Figure

    xcos_scores, labels = random_pairs(300, 300, seed=6)
    cos_scores = xcos_scores + np.random.default_rng(0).normal(0, 0.3, xcos_scores.size)
    curves = {
        "xcos": roc_points(xcos_scores, labels),
        "cos": roc_points(cos_scores, labels),
    }
    fig = roc_figure(curves, "LFW")
    assert isinstance(fig, Figure)
    (axes,) = fig.axes
    assert len(axes.get_lines()) == 2
    assert axes.get_xscale() == "log"
    assert axes.get_xlim() == pytest.approx((1e-4, 1.0))
    assert axes.get_title() == "LFW"
    legend = [text.get_text() for text in axes.get_legend().get_texts()]
    assert legend == [
        f"xcos (AUC {roc_auc(xcos_scores, labels):.4f})",
        f"cos (AUC {roc_auc(cos_scores, labels):.4f})",
    ]
    path = tmp_path / "roc.png"
    fig.savefig(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_roc_figure_bad_curves():
    with pytest.raises(ValueError, match="at least one curve"):
        roc_figure({}, "empty")
    with pytest.raises(ValueError, match="curve 'cos'"):
        roc_figure({"cos": (np.array([0.0, 1.0]), np.array([0.0, 0.5, 1.0]))}, "bad")
