"""``Explanation``s of a pair set's pairs (``explain_pairs``): what the tester, the training
log and the report draw."""

import numpy as np
import pytest
import torch

from tests.evaluation.test_evaluator import CPU, array_pair_set, small_model
from xcos.evaluation.evaluator import compare_pairs, embed_images
from xcos.explain.explanation import Explanation, explain_pairs
from xcos.models.geometry import grid_edges


def test_explain_pairs_gives_each_pair_its_maps_truth_edges_and_decision():
    model, pair_set = small_model().train(), array_pair_set()
    picked = [3, 0, 7]
    explained = explain_pairs(model, pair_set, picked, CPU, threshold=0.5)
    assert model.training  # put back as it was: the training log calls it mid-run
    assert [e.pair for e in explained] == picked
    assert [e.label for e in explained] == [int(pair_set.labels[i]) for i in picked]
    for explanation, index in zip(explained, picked, strict=True):
        assert isinstance(explanation, Explanation)
        a, b = pair_set.pairs[index]
        assert np.array_equal(explanation.faces[0], pair_set.image(int(a), 32))
        assert np.array_equal(explanation.faces[1], pair_set.image(int(b), 32))
        np.testing.assert_allclose(explanation.cell_edges, grid_edges(model.backbone, 32))
        assert explanation.same == (explanation.score > 0.5) and explanation.threshold == 0.5
        assert explanation.contribution.sum() == pytest.approx(explanation.score, abs=1e-5)
    undecided = explain_pairs(model, pair_set, picked[:1], CPU)[0]
    assert undecided.same is None and undecided.threshold is None


def test_explain_pairs_reads_already_compared_pairs_without_running_the_model():
    model, pair_set = small_model(), array_pair_set()
    with torch.no_grad():
        compared = compare_pairs(
            model, embed_images(model, pair_set, CPU), pair_set.pairs, CPU, keep_maps=True
        )
    fresh = explain_pairs(model, pair_set, [5, 2], CPU, threshold=0.3)
    model.embed = None  # the model must not run again
    read = explain_pairs(model, pair_set, [5, 2], CPU, threshold=0.3, compared=compared)
    for got, expected, index in zip(read, fresh, [5, 2], strict=True):
        assert got.score == float(compared["xcos"][index])
        assert got.score == pytest.approx(expected.score, abs=1e-5)
        np.testing.assert_allclose(got.difference, expected.difference, atol=1e-5)
        assert got.pair == index and got.label == expected.label
    assert explain_pairs(model, pair_set, [], CPU) == []
