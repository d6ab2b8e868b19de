"""Explanation figures: the difference panel, the most different cells, the patch-cosine
scale's centre and maps drawn on the cells' real pixels (synthetic faces and maps)."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import QuadMesh
from matplotlib.colors import TwoSlopeNorm
from matplotlib.patches import Rectangle

from xcos.explain.explanation import Explanation
from xcos.explain.figures import (
    DIFFERENCE_TITLE,
    cosine_norm,
    difference_map,
    most_different_cells,
    overlay_figure,
    pair_figure,
)

#: IR / iResNet cells on a 112-px face: cell o centred on pixel 16o + 0.5.
IR_EDGES = np.array([0.0, 8.5, 24.5, 40.5, 56.5, 72.5, 88.5, 112.0])
#: The hand-made difference map's top three cells, highest first.
TOP = [[3, 5], [0, 0], [6, 2]]


def faces(size: int = 112) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return tuple(rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(2))


def maps(cells: int = 7) -> tuple[np.ndarray, np.ndarray, float]:
    """(patch cosine in 0.6..1.0 as a recognizer gives, attention summing to 1, xCos)."""
    rng = np.random.default_rng(1)
    cosine = rng.uniform(0.6, 1.0, (cells, cells))
    attention = rng.uniform(0.5, 1.0, (cells, cells))
    attention /= attention.sum()
    return cosine, attention, float((cosine * attention).sum())


def hand_difference(cells: int = 7) -> np.ndarray:
    difference = np.full((cells, cells), 0.01)
    for value, (row, column) in zip((0.3, 0.2, 0.1), TOP, strict=True):
        difference[row, column] = value
    return difference


def panel(figure, title: str):
    return next(axis for axis in figure.axes if axis.get_title() == title)


def mesh_of(axis) -> QuadMesh:
    (mesh,) = [c for c in axis.collections if isinstance(c, QuadMesh)]
    return mesh


def outlines(axis) -> dict[int, Rectangle]:
    """The most-different outlines of an axis by rank."""
    found = {}
    for patch in axis.patches:
        gid = patch.get_gid() or ""
        if gid.startswith("most_different_"):
            found[int(gid.rsplit("_", 1)[1])] = patch
    return found


def test_difference_map_and_most_different_cells():
    cosine, attention, score = maps()
    difference = difference_map(cosine, attention)
    assert np.allclose(difference, attention * (1 - cosine))
    assert difference.sum() == pytest.approx(1 - score, abs=1e-12)
    assert most_different_cells(hand_difference()) == TOP
    assert most_different_cells(np.array([[0.5, 0.5], [0.1, 0.5]]), 2) == [[0, 0], [0, 1]]


@pytest.mark.parametrize("layout", [pair_figure, overlay_figure])
def test_cosine_scale_is_centred_on_the_threshold_else_the_score(layout):
    face_a, face_b = faces()
    cosine, attention, score = maps()
    with_threshold = layout(face_a, face_b, cosine, attention, score, threshold=0.92)
    without = layout(face_a, face_b, cosine, attention, score)
    for figure, centre, label in (
        (with_threshold, 0.92, "centre: threshold 0.920"),
        (without, score, f"centre: xCos {score:.3f}"),
    ):
        cosine_axes = [a for a in figure.axes if a.get_title().startswith("patch cosine")]
        assert cosine_axes
        for axis in cosine_axes:
            norm = mesh_of(axis).norm
            assert isinstance(norm, TwoSlopeNorm)
            assert norm.vcenter == pytest.approx(centre)
            # from the map, not -1..1: the 0.6..1.0 cosines use the whole colour range
            assert (norm.vmin, norm.vmax) == pytest.approx((cosine.min(), cosine.max()))
            assert norm(centre) == pytest.approx(0.5)
        labels = [a.get_ylabel() for a in figure.axes]
        assert label in labels


def test_cosine_scale_spans_at_least_a_margin_and_stays_in_range():
    flat = np.full((4, 4), 0.9)
    norm, _ = cosine_norm(flat, score=0.9)
    assert (norm.vmin, norm.vcenter, norm.vmax) == pytest.approx((0.85, 0.9, 0.95))
    norm, _ = cosine_norm(np.array([[-1.0, 0.99]]), score=0.5, threshold=0.98)
    assert (norm.vmin, norm.vmax) == pytest.approx((-1.0, 1.0))  # clipped to [-1, 1]
    norm, _ = cosine_norm(np.ones((2, 2)), score=1.0)  # identical faces: still a valid norm
    assert norm.vmin < norm.vcenter == 1.0 < norm.vmax


def test_maps_are_drawn_on_the_real_pixels_of_the_cells():
    face_a, face_b = faces()
    cosine, _, score = maps()
    attention = np.full((7, 7), 0.1 / 48)
    attention[0, 0] = 0.9  # one bright cell: [0, 8.5) x [0, 8.5) with IR edges
    figure = pair_figure(face_a, face_b, cosine, attention, score, edges=IR_EDGES)
    axis = panel(figure, "attention (sums to 1)")
    mesh = mesh_of(axis)
    coordinates = mesh.get_coordinates()
    assert np.allclose(coordinates[0, :, 0], IR_EDGES) and np.allclose(
        coordinates[:, 0, 1], IR_EDGES
    )
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[..., :3].astype(int)

    def colour_at(x: float, y: float) -> np.ndarray:
        column, row = axis.transData.transform((x, y))
        return pixels[round(pixels.shape[0] - row), round(column)]

    bright = np.round(np.array(mesh.cmap(mesh.norm(0.9))[:3]) * 255)
    dark = np.round(np.array(mesh.cmap(mesh.norm(0.1 / 48))[:3]) * 255)
    assert np.abs(colour_at(4.0, 4.0) - bright).max() <= 3  # inside the IR cell (0, 0)
    # pixel 12 is in cell (1, 1) with IR edges, but would be in (0, 0) with equal 16-px cells
    assert np.abs(colour_at(12.0, 12.0) - dark).max() <= 3
    assert np.abs(colour_at(4.0, 12.0) - dark).max() <= 3
    assert axis.get_xlim() == (0.0, 112.0) and axis.get_ylim() == (112.0, 0.0)  # row 0 on top


def test_without_edges_the_face_is_cut_into_equal_cells():
    face_a, face_b = faces(64)
    cosine, attention, score = maps(4)
    figure = overlay_figure(face_a, face_b, cosine, attention, score)
    coordinates = mesh_of(panel(figure, "difference over face B")).get_coordinates()
    assert np.allclose(coordinates[0, :, 0], [0, 16, 32, 48, 64])
    with pytest.raises(ValueError, match="edges"):
        pair_figure(face_a, face_b, cosine, attention, score, edges=IR_EDGES)


def check_outlines(axis) -> None:
    """The top three cells outlined at their IR pixel rectangles, the first the strongest."""
    found = outlines(axis)
    assert sorted(found) == [1, 2, 3], axis.get_title()
    for rank, (row, column) in enumerate(TOP, start=1):
        rectangle = found[rank]
        assert rectangle.get_xy() == pytest.approx((IR_EDGES[column], IR_EDGES[row]))
        assert rectangle.get_width() == pytest.approx(IR_EDGES[column + 1] - IR_EDGES[column])
        assert rectangle.get_height() == pytest.approx(IR_EDGES[row + 1] - IR_EDGES[row])
        assert not rectangle.get_fill()
    assert found[1].get_linewidth() > found[2].get_linewidth() >= found[3].get_linewidth()
    numbers = {text.get_text(): text.get_position() for text in axis.texts}
    for rank, (row, column) in enumerate(TOP, start=1):
        x, y = numbers[str(rank)]
        assert (
            IR_EDGES[column] <= x < IR_EDGES[column + 1] and IR_EDGES[row] <= y < IR_EDGES[row + 1]
        )


def test_paper_layout_has_the_difference_panel_and_outlines_the_top_cells():
    face_a, face_b = faces()
    cosine, attention, score = maps()
    difference = hand_difference()
    figure = pair_figure(
        face_a,
        face_b,
        cosine,
        attention,
        score,
        0.9,
        1,
        0.92,
        difference=difference,
        edges=IR_EDGES,
    )
    titles = [axis.get_title() for axis in figure.axes if axis.get_title()]
    assert titles == ["face A", "face B", "patch cosine", "attention (sums to 1)", DIFFERENCE_TITLE]
    shown = mesh_of(panel(figure, DIFFERENCE_TITLE))
    assert np.allclose(shown.get_array(), difference)
    assert shown.norm.vmin == 0.0
    for title in ("face A", "face B", DIFFERENCE_TITLE):
        check_outlines(panel(figure, title))
    assert not outlines(panel(figure, "patch cosine"))
    face = panel(figure, "face A").get_images()[0]
    assert face.get_array().shape == (112, 112, 3) and face.get_extent() == [0, 112, 112, 0]


def test_overlay_layout_has_a_difference_row_and_outlines_the_top_cells():
    face_a, face_b = faces()
    cosine, attention, score = maps()
    figure = overlay_figure(
        face_a, face_b, cosine, attention, score, difference=hand_difference(), edges=IR_EDGES
    )
    for side in "AB":
        axis = panel(figure, f"difference over face {side}")
        assert axis.get_images()[0].get_array().shape == (112, 112, 3)
        mesh = mesh_of(axis)
        assert np.allclose(mesh.get_array(), hand_difference()) and 0 < mesh.get_alpha() < 1
        check_outlines(axis)
    assert len(figure.axes) == 6 + 3  # six panels, one colour bar per row


def test_difference_defaults_to_attention_times_one_minus_cosine_and_positional_calls_work():
    face_a, face_b = faces()
    cosine, attention, score = maps()
    figure = pair_figure(face_a, face_b, cosine, attention, score, 0.9, 0, 0.92)  # positional
    shown = mesh_of(panel(figure, DIFFERENCE_TITLE)).get_array()
    assert np.allclose(shown, attention * (1 - cosine))
    assert "threshold 0.920 -> different" in figure._suptitle.get_text()


def test_an_explanation_is_drawn_with_its_difference_edges_truth_and_decision():
    face_a, face_b = faces()
    cosine, attention, score = maps()
    explanation = Explanation(
        score=score,
        same=score > 0.92,
        threshold=0.92,
        cos=0.8,
        patch_cosine=cosine,
        attention=attention,
        faces=(face_a, face_b),
        difference=hand_difference(),
        cell_edges=IR_EDGES,
        label=1,
    )
    figure = explanation.figure()
    check_outlines(panel(figure, "face B"))
    assert mesh_of(panel(figure, "patch cosine")).norm.vcenter == pytest.approx(0.92)
    caption = figure._suptitle.get_text()
    assert "threshold 0.920 -> different" in caption and "truth: same" in caption
    overlay = explanation.figure("overlay")
    check_outlines(panel(overlay, "difference over face A"))
    undecided = Explanation(**{**vars(explanation), "threshold": None, "same": None, "label": None})
    caption = undecided.figure()._suptitle.get_text()
    assert "threshold" not in caption and "truth" not in caption
    assert mesh_of(panel(undecided.figure(), "patch cosine")).norm.vcenter == pytest.approx(score)
