"""The LFW protocol: identity-disjoint folds (real LFW files) and the whole run on a fake LFW."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import reference_kfold, reference_threshold, require_shared
from xcos.config import load_config
from xcos.data.lfw import read_lfw
from xcos.data.lfw_people import LFWPeoplePairs, people_of_sets
from xcos.errors import ConfigError, DataError
from xcos.recipes import lfw_protocol
from xcos.recipes.lfw_protocol import format_results, run_lfw_protocol, score_pairs

CPU = torch.device("cpu")


def test_view2_fold_k_uses_only_the_people_of_set_k():
    lfw = require_shared("data/lfw")
    sets = [people_of_sets(str(lfw / "people.txt"), [k]) for k in range(1, 11)]
    names = [{name for name, _ in people} for people in sets]
    assert sum(len(n) for n in names) == len(set().union(*names))  # the sets are disjoint
    pairs = read_lfw(str(lfw / "pairs.txt"))
    for fold in range(10):
        in_fold = pairs.folds == fold
        used = {pairs.extra[c][i] for c in ("name_a", "name_b") for i in np.flatnonzero(in_fold)}
        assert used <= names[fold]
    others = people_of_sets(str(lfw / "people.txt"), exclude_sets=[3])
    assert not {name for name, _ in others} & names[2]
    assert len(others) == sum(len(n) for k, n in enumerate(names) if k != 2)


def test_people_sets_are_checked():
    lfw = require_shared("data/lfw")
    with pytest.raises(DataError, match="set 11 does not exist"):
        people_of_sets(str(lfw / "people.txt"), [11])
    with pytest.raises(DataError, match="no set left"):
        people_of_sets(str(lfw / "peopleDevTrain.txt"), exclude_sets=[1])


def fake_lfw(root: Path, synth: Path) -> Path:
    """An LFW-shaped folder from the tiny SynthFaces set: 10 sets of 1 person (4 images)."""
    identities = sorted(p for p in (synth / "train").iterdir() if p.is_dir())
    identities += sorted(p for p in (synth / "val").iterdir() if p.is_dir())
    names = [f"Person_{i:02d}" for i in range(12)]
    for name, folder in zip(names, identities, strict=False):
        target = root / "images" / name
        target.mkdir(parents=True)
        for number, image in enumerate(sorted(folder.iterdir())[:4], start=1):
            shutil.copy(image, target / f"{name}_{number:04d}.jpg")
    people = ["10"] + [line for name in names[:10] for line in ("1", f"{name} 4")]
    (root / "people.txt").write_text("\n".join(people) + "\n")
    pairs = ["10\t1"]
    for k in range(10):
        other = names[(k + 1) % 10]
        pairs += [f"{names[k]}\t1\t2", f"{names[k]}\t3\t{other}\t4"]
    (root / "pairs.txt").write_text("\n".join(pairs) + "\n")
    (root / "peopleDevTrain.txt").write_text(f"2\n{names[0]}\t4\n{names[1]}\t4\n")
    test_pairs = [f"{names[10]}\t1\t2", f"{names[11]}\t1\t3"]
    test_pairs += [f"{names[10]}\t3\t{names[11]}\t4", f"{names[11]}\t2\t{names[10]}\t1"]
    (root / "pairsDevTest.txt").write_text("2\n" + "\n".join(test_pairs) + "\n")
    return root


PLUGIN = {
    "data": {
        "synthetic": None,
        "train": {
            "type": "lfw_people_pairs",
            "people": "unused: the protocol sets it",
            "align": {"image_size": 64, "no_face": "center_crop"},
            "flip": False,
        },
    },
    "model": {
        "backbone": {"embedding_dim": 16},
        "freeze_backbone": True,
        "cos": "embedding",
        "identity_head": None,
        "head": {"detach_cosine": False},
    },
    "losses": [{"type": "mse", "output": "xcos", "target": "target_cos"}],
    "optimizers": {"main": {"type": "Adam", "groups": ["grid"], "lr": 1e-3}},
}


@pytest.mark.slow
def test_protocol_trains_a_head_per_fold_and_reports_three_scores(
    tiny_config, tiny_synth, tmp_path, monkeypatch
):
    monkeypatch.setenv("XCOS_CACHE", str(tmp_path / "cache"))
    lfw = fake_lfw(tmp_path / "lfw", tiny_synth)
    config = tiny_config(PLUGIN)
    scored = []  # the scores of every trained head, in order

    def keep_scores(*args, **kwargs):
        scored.append(score_pairs(*args, **kwargs))
        return scored[-1]

    monkeypatch.setattr(lfw_protocol, "score_pairs", keep_scores)
    results = run_lfw_protocol(config, lfw, tmp_path / "run", CPU, folds=[1, 2])
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    for name in ("cos", "xcos", "xcos_uniform"):
        assert len(results["view2"][name]["per_fold"]) == 2
        assert set(results["view1"][name]) == {"accuracy", "accuracy_std"}
    # View 2 recomputed from the scores: fake_lfw's pairs.txt holds, per fold k, a matched
    # then a mismatched pair of person k; fold k's threshold comes from the 18 other pairs.
    labels, pair_folds = np.tile([1, 0], 10), np.repeat(np.arange(10), 2)
    assert len(scored) == 2 * 2 + 2  # (xcos, xcos_uniform) per fold, then both for View 1
    expected = {"cos": [], "xcos": [], "xcos_uniform": []}
    for index, fold in enumerate([1, 2]):
        test = pair_folds == fold - 1
        for offset, name in enumerate(["xcos", "xcos_uniform"]):
            scores = scored[2 * index + offset]
            assert len(scores["xcos"]) == 20
            threshold, _ = reference_threshold(scores["xcos"][~test], labels[~test])
            expected[name].append(
                float(((scores["xcos"][test] > threshold) == labels[test]).mean())
            )
        cos = scored[2 * index]["cos"]  # the frozen recognizer's: the same for both heads
        np.testing.assert_array_equal(cos, scored[2 * index + 1]["cos"])
        threshold, _ = reference_threshold(cos[~test], labels[~test])
        expected["cos"].append(float(((cos[test] > threshold) == labels[test]).mean()))
    for name, accuracies in expected.items():
        view2 = results["view2"][name]
        assert view2["per_fold"] == pytest.approx(accuracies, abs=1e-12), name
        assert view2["accuracy"] == pytest.approx(np.mean(accuracies), abs=1e-12), name
        assert view2["accuracy_std"] == pytest.approx(np.std(accuracies), abs=1e-12), name
    # View 1: 10-fold accuracy on pairsDevTest, recomputed from the scores
    dev_test = read_lfw(str(lfw / "pairsDevTest.txt"))
    view1_scores = {
        "xcos": scored[4]["xcos"],
        "cos": scored[4]["cos"],
        "xcos_uniform": scored[5]["xcos"],
    }
    for name, scores in view1_scores.items():
        accuracies, _ = reference_kfold(scores, dev_test.labels, dev_test.folds)
        view1 = results["view1"][name]
        assert view1["accuracy"] == pytest.approx(np.mean(accuracies), abs=1e-12), name
        assert view1["accuracy_std"] == pytest.approx(np.std(accuracies), abs=1e-12), name
    for fold in ("fold01", "fold02"):
        for head in ("xcos", "xcos_uniform"):
            assert (tmp_path / "run" / fold / head / "checkpoints" / "last.pth").is_file()
    trained = load_config(tmp_path / "run" / "fold02" / "xcos_uniform" / "config.json")
    assert trained.data.train["exclude_sets"] == [2]
    assert trained.model.head["attention"] == "uniform"
    assert "View 2" in format_results(results)


def test_protocol_refuses_a_trainable_backbone(tiny_config, tmp_path):
    config = tiny_config(PLUGIN, overrides=("model.freeze_backbone=false",))
    with pytest.raises(ConfigError, match="freeze_backbone"):
        run_lfw_protocol(config, tmp_path, tmp_path / "run", CPU)


def test_lfw_people_pairs_excludes_sets_and_labels_identities(tiny_synth, tmp_path, monkeypatch):
    monkeypatch.setenv("XCOS_CACHE", str(tmp_path / "cache"))
    lfw = fake_lfw(tmp_path / "lfw", tiny_synth)
    align = {"image_size": 64, "no_face": "center_crop"}
    data = LFWPeoplePairs(str(lfw / "people.txt"), exclude_sets=[1, 2], align=align, seed=1)
    assert data.identity_names == [f"Person_{i:02d}" for i in range(2, 10)]
    assert len(data) == 32 and data.num_classes == 8
    assert len(data.store) == 48  # every image of the folder, aligned once
    item = data[0]
    assert item["image_a"].shape == (3, 64, 64)
    assert int(item["label"]) == int(item["identity_a"] == item["identity_b"])


@pytest.mark.slow
def test_lfw_protocol_command_prints_the_table(tiny_synth, tmp_path, monkeypatch, capsys):
    from tests.conftest import DEMO_CONFIG, tiny_overrides
    from xcos.cli import main

    monkeypatch.setenv("XCOS_CACHE", str(tmp_path / "cache"))
    lfw = fake_lfw(tmp_path / "lfw", tiny_synth)
    layers = []
    for index, layer in enumerate((tiny_overrides(tiny_synth), PLUGIN)):
        layers.append(tmp_path / f"layer{index}.json")
        layers[-1].write_text(json.dumps(layer))
    args = ["lfw-protocol", "-tc", str(DEMO_CONFIG), "-sc", *map(str, layers)]
    args += ["--lfw", str(lfw), "--folds", "3", "--no-view1", "--out", str(tmp_path / "run")]
    assert main([*args, "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "xcos_uniform" in printed and "results.json" in printed
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["folds"] == [3] and "view1" not in results


@pytest.mark.slow
def test_heads_trained_side_by_side_equal_heads_trained_in_turn(
    tiny_config, tiny_synth, tmp_path, monkeypatch
):
    monkeypatch.setenv("XCOS_CACHE", str(tmp_path / "cache"))
    lfw = fake_lfw(tmp_path / "lfw", tiny_synth)
    config = tiny_config(PLUGIN)
    jobs = {
        (fold, name): lfw_protocol.HeadJob(
            config.raw,
            lfw_protocol.lfw_people(lfw, "people.txt", exclude=fold),
            head,
            tmp_path / f"{fold}",
        )
        for fold in (1, 2)
        for name, head in lfw_protocol.VARIANTS.items()
    }
    in_turn = lfw_protocol.train_heads(jobs, config, CPU, workers=1)
    side_by_side = lfw_protocol.train_heads(jobs, config, CPU, workers=2)
    assert set(in_turn) == set(side_by_side) == set(jobs)
    for key in jobs:
        mine, theirs = in_turn[key].state_dict(), side_by_side[key].state_dict()
        assert set(mine) == set(theirs)
        for name in mine:  # seeded alike; the thread count per process may differ, and with
            # it the order of float sums: differences of a few 1e-5 were seen
            torch.testing.assert_close(mine[name], theirs[name], rtol=1e-2, atol=5e-4)
    # the two folds' heads (other training people) differ by far more, so the check can fail
    first, second = in_turn[1, "xcos"].state_dict(), in_turn[2, "xcos"].state_dict()
    gap = max(float((first[k] - second[k]).abs().max()) for k in first if k.startswith("head."))
    assert gap > 20 * 5e-4
