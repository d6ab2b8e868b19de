"""Measured cell effects (``xcos.explain.effects``), the yardsticks built on them (self-swap
game, agreement with the recognizer) and the loss that distils them (``effect_ranking``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.explain.test_faithfulness_games import xcos_difference
from xcos.explain.effects import cell_effects, changed_cells
from xcos.explain.faithfulness import (
    effect_agreement,
    favourite_cell_share,
    play_self_swap_game,
    spearman,
)
from xcos.explain.regions import region_masks
from xcos.losses import EffectRanking
from xcos.models.backbones import PatchEncoder
from xcos.models.backbones.dlib_resnet import DlibResNet
from xcos.models.geometry import grid_edges, pixel_spans
from xcos.models.xcos_head import XCosHead
from xcos.models.xcos_model import XCosModel

SIZE, GRID = 64, 4


class CellMeans(nn.Module):
    """A recognizer whose embedding is each cell's mean colour: every cell independent."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        cells = F.adaptive_avg_pool2d(x, GRID) * self.scale
        return {"embedding": cells.flatten(1) + 1.0}  # offset: a grey face is not all zeros


@pytest.fixture(scope="module")
def faces(tiny_synth) -> list[torch.Tensor]:
    from xcos.data.images import read_face, to_tensor

    paths = sorted((tiny_synth / "train").glob("*/*.png"))[::4]
    return [to_tensor(read_face(path, SIZE))[None] for path in paths]


def spans_of(size: int = SIZE, grid: int = GRID):
    return pixel_spans(np.linspace(0, size, grid + 1))


def test_effects_are_zero_where_the_faces_agree_and_count_their_images(faces):
    a, b = faces[0], faces[0].clone()
    b[..., 16:32, 32:48] = faces[1][..., 16:32, 32:48]  # cell (1, 2) only
    effects, cosines, images = cell_effects(CellMeans(), a, b, spans_of())
    assert np.flatnonzero(changed_cells(a[0], b[0], spans_of())).tolist() == [6]
    assert images == 2 + 1  # the two faces, then one pass for the one changed cell
    assert effects.shape == (1, GRID, GRID) and cosines.shape == (1,)
    assert np.count_nonzero(effects) == 1 and effects[0, 1, 2] > 0  # putting A's cell back
    assert abs(cosines[0] + effects[0, 1, 2] - 1.0) < 1e-5  # ... makes the pair identical


def test_effects_equal_occlusion_run_by_hand_on_dlib():
    torch.manual_seed(0)
    backbone = DlibResNet(level=2, weights=None).eval()
    faces = torch.rand(2, 3, 150, 150) * 2 - 1
    spans = pixel_spans(grid_edges(backbone))
    effects, cosines, images = cell_effects(backbone, faces[:1], faces[1:], spans, batch_size=7)
    assert images == 2 + 64
    with torch.no_grad():
        embed = lambda x: F.normalize(backbone(x)["embedding"], dim=1)  # noqa: E731
        base = float((embed(faces[:1]) * embed(faces[1:])).sum())
        for cell in (0, 27, 63):
            (y0, y1), (x0, x1) = spans[cell // 8], spans[cell % 8]
            edited = faces[1:].clone()
            edited[..., y0:y1, x0:x1] = faces[:1, :, y0:y1, x0:x1]
            expected = float((embed(faces[:1]) * embed(edited)).sum()) - base
            assert abs(effects[0, cell // 8, cell % 8] - expected) < 1e-5
    assert abs(cosines[0] - base) < 1e-5


def test_spearman_known_answers():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 4))
    assert spearman(a, a) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(a, 3 * a + 1) == pytest.approx(1.0)  # ranks only
    assert spearman(a, np.ones((4, 4))) == 0.0  # a constant map ranks nothing
    values = [spearman(rng.standard_normal(16), a) for _ in range(400)]
    assert abs(np.mean(values)) < 4 * np.std(values) / np.sqrt(400)


def local_model() -> XCosModel:
    torch.manual_seed(0)
    backbone = PatchEncoder(grid=GRID, input_size=SIZE, width=0.25, out_channels=32)
    head = XCosHead(backbone.out_channels, grid_channels=32, attention="uniform")
    return XCosModel(backbone, head).eval()


def constant(model, face_a, face_b) -> np.ndarray:
    return np.ones((GRID, GRID))


def test_self_swap_game_independent_cells_hit_and_trivial_maps_do_not(faces):
    model = local_model()
    rng = np.random.default_rng(0)
    methods = {
        "xcos": xcos_difference,
        "constant": constant,
        "random": lambda m, a, b: rng.standard_normal((GRID, GRID)),
    }
    pairs = [(face, faces[(k + 3) % len(faces)]) for k, face in enumerate(faces[:8])]
    spans = pixel_spans(grid_edges(model.backbone))
    game = play_self_swap_game(
        model, pairs, region_masks("arcface", SIZE), spans, methods, lambda a, b: {}
    )
    assert game.results["xcos"].rate() == 1.0  # the swap is the only difference
    assert game.results["constant"].rate() == 0.0
    assert favourite_cell_share(game.swapped_cells["constant"]) == 1.0
    chance = np.mean([c for values in game.chance.values() for c in values])
    hits = game.results["random"].rate()
    assert abs(hits - chance) < 4 * np.sqrt(chance * (1 - chance) / game.results["random"].count())


def test_agreement_is_one_for_the_effects_and_near_zero_for_trivial_maps(faces):
    class Recognizer:  # what effect_agreement reads: the backbone
        backbone = CellMeans()

    spans = spans_of()
    rng = np.random.default_rng(1)

    def measured(model, a, b):
        return cell_effects(model.backbone, a, b, spans)[0][0]

    methods = {
        "measured": measured,
        "opposite": lambda m, a, b: -measured(m, a, b),
        "constant": constant,
        "random": lambda m, a, b: rng.standard_normal((GRID, GRID)),
    }
    pairs = [(faces[k], faces[k + 1]) for k in range(len(faces) - 1)]
    agreement = effect_agreement(Recognizer(), pairs, spans, methods)
    assert np.mean(agreement["measured"]) == pytest.approx(1.0)
    assert np.mean(agreement["opposite"]) == pytest.approx(-1.0)
    assert np.mean(agreement["constant"]) == 0.0
    assert abs(np.mean(agreement["random"])) < 0.25


def test_effect_ranking_prefers_the_measured_shares():
    torch.manual_seed(0)
    effect = torch.randn(6, 4, 4)
    effect[5] = -effect[5].abs()  # no positive effect: the row teaches nothing
    batch = {"effect": effect, "effect_valid": torch.tensor([1.0, 1, 1, 1, 1, 0])}
    loss = EffectRanking()
    matched = loss({"difference": effect.clamp_min(0) + 1e-4}, batch)
    shuffled = loss({"difference": effect.clamp_min(0).flip(-1) + 1e-4}, batch)
    flat = loss({"difference": torch.ones(6, 4, 4)}, batch)
    assert matched < flat < shuffled
    none = {"effect": effect, "effect_valid": torch.zeros(6)}
    assert float(loss({"difference": torch.rand(6, 4, 4)}, none)) == 0.0
    only_negative = {"effect": -effect.abs(), "effect_valid": torch.ones(6)}
    assert float(loss({"difference": torch.rand(6, 4, 4)}, only_negative)) == 0.0


EFFECTS = {"data": {"effects": {"pairs": 5, "swaps": 6, "side": [0.2, 0.4], "seed": 1}}}


def test_training_pairs_carry_measured_effects_cached_once(tiny_config, tmp_path, monkeypatch):
    from tests.models.test_plugin import PLUGIN
    from xcos.engine import effect_targets
    from xcos.engine.trainer import Trainer

    monkeypatch.setenv("XCOS_CACHE", str(tmp_path / "cache"))
    ranking = {"type": "effect_ranking", "weight": 0.1}
    config = tiny_config(PLUGIN, EFFECTS, {"losses": [*PLUGIN["losses"], ranking]})
    trainer = Trainer(config, tmp_path / "run", torch.device("cpu"))
    data = trainer.dataset
    random_pairs = len(data.pairs)
    assert len(data) == random_pairs + 5 + 6
    assert float(data[(0, 0)]["effect_valid"]) == 0.0
    spans = pixel_spans(grid_edges(trainer.model.backbone))
    faces = data.pairs.pairs
    for index in range(5):  # natural pairs: the effects of (A, B) measured on the images
        item = data[(0, random_pairs + index)]
        i, j = (int(v) for v in data.effects["natural"][index])
        expected = cell_effects(
            trainer.model.backbone, faces.load(i, False)[None], faces.load(j, False)[None], spans
        )[0][0]
        assert float(item["effect_valid"]) == 1.0
        assert np.allclose(item["effect"].numpy(), expected, atol=1e-5)
        assert int(item["label"]) == int(faces.labels[i] == faces.labels[j])
    for index in range(6):  # self-swaps: one face against its pasted copy
        item = data[(0, random_pairs + 5 + index)]
        assert int(item["label"]) == 1 and int(item["identity_a"]) == int(item["identity_b"])
        face = int(data.effects["swap_face"][index])
        assert torch.equal(
            item["features_a"], data.pairs.face_outputs(face, False, "a")["features_a"]
        )
        assert not torch.equal(item["features_a"], item["features_b"])
        assert 0 < np.count_nonzero(item["effect"].numpy()) < item["effect"].numel()
    trainer.fit()
    logged = (tmp_path / "run" / "metrics.csv").read_text()
    assert "effect_ranking" in logged

    def no_measuring(*args):
        raise AssertionError("measured again instead of reading the cache")

    monkeypatch.setattr(effect_targets, "measure", no_measuring)
    again = Trainer(config, tmp_path / "again", torch.device("cpu"))
    assert torch.equal(again.dataset.effects["swap_effect"], data.effects["swap_effect"])


def test_effects_need_cached_backbone_outputs(tiny_config, tmp_path, monkeypatch):
    from xcos.engine.trainer import Trainer
    from xcos.errors import ConfigError

    monkeypatch.setenv("XCOS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match=r"data\.effects"):
        Trainer(tiny_config(EFFECTS), tmp_path / "run", torch.device("cpu"))


def test_folds_keep_the_measured_pairs_of_their_own_people():
    """Pairs measured once over everyone; a fold keeps those whose faces and donors are all
    its own, renumbered to its indices (``restrict``)."""
    from types import SimpleNamespace

    from xcos.engine.effect_targets import restrict

    source = SimpleNamespace(store_index=np.arange(10, 20))  # everyone: store faces 10..19
    fold = SimpleNamespace(store_index=np.array([12, 13, 14, 17, 18]))  # a fold's own faces
    measured = {
        "natural": torch.tensor([[2, 3], [2, 5], [7, 8]]),  # store (12,13) (12,15) (17,18)
        "natural_effect": torch.arange(3.0)[:, None, None].expand(3, 2, 2),
        "swap_face": torch.tensor([4, 4, 0]),  # store 14, 14, 10
        "swap_donor": torch.tensor([7, 9, 2]),  # store 17, 19, 12
        "swap_box": torch.rand(3, 4),
        "swap_effect": torch.arange(3.0)[:, None, None].expand(3, 2, 2),
        "images": torch.tensor(99),
    }
    kept = restrict(measured, source, fold)
    assert kept["natural"].tolist() == [[0, 1], [3, 4]]
    assert kept["natural_effect"][:, 0, 0].tolist() == [0.0, 2.0]
    assert kept["swap_face"].tolist() == [2] and kept["swap_donor"].tolist() == [3]
    assert kept["swap_effect"][:, 0, 0].tolist() == [0.0]
    assert torch.equal(kept["swap_box"], measured["swap_box"][:1])
