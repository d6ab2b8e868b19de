"""The pieces of bench/faithfulness.py: progressive cell replacement, curve area, pointing."""

from __future__ import annotations

import importlib.util

import numpy as np
import torch

from tests.conftest import REPO


def bench():
    spec = importlib.util.spec_from_file_location(
        "faithfulness", REPO / "bench" / "faithfulness.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_progressive_replaces_one_cell_per_step_in_the_given_order():
    faithfulness = bench()
    start, source = torch.zeros(1, 3, 8, 8), torch.ones(1, 3, 8, 8)
    steps = faithfulness.progressive(start, source, np.array([3, 0, 2, 1]), 2, 2)
    assert steps.shape == (5, 3, 8, 8)
    assert steps[0].sum() == 0 and steps[-1].min() == 1
    assert steps[1][:, 4:, 4:].min() == 1 and steps[1].sum() == 3 * 16  # cell 3: bottom right
    assert steps[2][:, :4, :4].min() == 1 and steps[2].sum() == 3 * 32  # then top left


def test_area_and_pointing_game():
    faithfulness = bench()
    assert faithfulness.area(np.array([1.0, 1.0, 1.0])) == 1.0
    assert faithfulness.area(np.array([1.0, 0.0, 0.0])) == 0.25
    lowest_top_right = np.array([[0.5, -0.9], [0.2, 0.3]])
    box = {"x0": "60", "y0": "0", "x1": "112", "y1": "50"}
    assert faithfulness.pointing_hit(lowest_top_right, box, 112)  # centre (84, 28) is inside
    assert not faithfulness.pointing_hit(-lowest_top_right, box, 112)
