"""The evaluator: each distinct image embedded once, flip TTA along the width axis."""

import numpy as np
import pytest
import torch

from tests.conftest import DEMO_CONFIG
from xcos.config import load_config
from xcos.data.pair_sets import PairSet
from xcos.evaluation.evaluator import embed_images, evaluate_pair_set
from xcos.models.xcos_model import build_model

CPU = torch.device("cpu")


def small_model():
    torch.manual_seed(0)
    config = load_config(DEMO_CONFIG, overrides=["model.backbone.input_size=32"])
    return build_model(config.model, num_classes=3).eval()


def array_pair_set(count=12, pairs=40, seed=0):
    rng = np.random.default_rng(seed)
    faces = rng.integers(0, 256, (count, 3, 32, 32), dtype=np.uint8)
    index = rng.integers(0, count, (pairs, 2))
    labels = np.tile([1, 0], pairs // 2)
    return PairSet("mem", faces, index, labels, np.repeat(np.arange(10), pairs // 10))


def test_each_distinct_image_is_embedded_once():
    model = small_model()
    seen = []
    original = model.embed
    model.embed = lambda images: (seen.append(len(images)), original(images))[1]
    pair_set = array_pair_set()
    result = evaluate_pair_set(model, pair_set, CPU, batch_size=5)
    assert sum(seen) == 12  # 40 pairs, 12 distinct images: 12 forwards, not 80
    assert max(seen) <= 5  # streamed in batches
    # The same scores as forwarding both faces of every pair.
    faces = torch.from_numpy(pair_set.images).float().div(127.5).sub(1)
    with torch.no_grad():
        direct = model.compare(
            original(faces[pair_set.pairs[:, 0]]), original(faces[pair_set.pairs[:, 1]])
        )
    assert np.allclose(result.scores["xcos"], direct["xcos"].numpy(), atol=1e-5)


def test_flip_tta_flips_grid_features_along_the_width():
    model = small_model()
    faces = array_pair_set().images[:4]
    mirrored = np.ascontiguousarray(faces[..., ::-1])  # mirror along the width (last axis)

    def grids(images):
        return embed_images(
            model,
            PairSet("m", images, np.zeros((0, 2), int), np.zeros(0), np.zeros(0)),
            CPU,
            flip=True,
        )["grid"]

    # f(x) + flip_w(f(flip_w(x))) commutes with mirroring: the mirror image's features are the
    # original's mirrored along the width, and not along the height.
    assert torch.allclose(grids(mirrored), grids(faces).flip(3), atol=1e-4)
    assert not torch.allclose(grids(mirrored), grids(faces).flip(2), atol=1e-3)


def test_faces_of_another_size_are_refused_not_resized():
    from xcos.errors import UnalignedImageError

    small = array_pair_set()
    small.images = small.images[..., :16, :16]  # 16x16 faces for a model taking 32x32
    with pytest.raises(
        UnalignedImageError, match="holds aligned 16x16 faces, the model takes 32x32"
    ):
        evaluate_pair_set(small_model(), small, CPU)


@pytest.mark.slow
def test_the_compiled_forward_scores_as_the_eager_one_and_follows_new_weights():
    """``compiled``: torch.compile with frozen weights gives the eager scores, a short last
    batch included (12 images in batches of 5: padded to 5, padding dropped), and a model
    whose weights changed since an earlier compiled run is scored with its new weights."""
    model = small_model()
    pair_set = array_pair_set()
    eager = evaluate_pair_set(model, pair_set, CPU, batch_size=5).scores
    compiled = evaluate_pair_set(model, pair_set, CPU, batch_size=5, compiled=True).scores
    for key in ("xcos", "cos"):
        assert np.allclose(compiled[key], eager[key], atol=1e-5)
    with torch.no_grad():
        for parameter in model.backbone.parameters():
            parameter.mul_(-1.5)
    changed = evaluate_pair_set(model, pair_set, CPU, batch_size=5).scores
    assert not np.allclose(changed["cos"], eager["cos"], atol=1e-3)  # the change shows
    recompiled = evaluate_pair_set(model, pair_set, CPU, batch_size=5, compiled=True).scores
    assert np.allclose(recompiled["cos"], changed["cos"], atol=1e-5)
