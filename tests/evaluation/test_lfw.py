"""LFW end to end: one fold of the real benchmark detected, aligned, packed and evaluated."""

import json

import numpy as np
import pytest
import torch

from tests.conftest import DEMO_CONFIG, reference_auc, reference_kfold, require_shared
from xcos.config import load_config
from xcos.data.align import FaceAligner
from xcos.data.lfw import read_lfw
from xcos.data.pack import read_pack
from xcos.data.prepare import cached_pack, subset_folds
from xcos.evaluation.evaluator import evaluate_pair_set
from xcos.models.xcos_model import build_model


@pytest.mark.slow
def test_one_lfw_fold_is_detected_aligned_and_evaluated():
    lfw = require_shared("data/lfw")
    fold = subset_folds(read_lfw(str(lfw / "pairs.txt"), str(lfw / "images")), [0])
    assert len(fold) == 600 and int(fold.labels.sum()) == 300
    # Cached on disk under a key of the contents (images, pairs, alignment settings), so
    # only the first run on a machine pays for detection and alignment.
    aligner = FaceAligner(select="central", no_face="center_crop")
    folder = cached_pack(fold, aligner, [lfw / "pairs.txt"])
    manifest = json.loads((folder / "manifest.json").read_text())
    stats = manifest["alignment"]["stats"]
    assert stats["images"] == len(fold.images)
    assert stats["faces"] / stats["images"] >= 0.99, stats  # detection succeeds on >= 99%
    assert stats["faces"] + stats["fallbacks"] == stats["images"]
    pack = read_pack(str(folder), "lfw_fold0")
    assert isinstance(pack.images, np.memmap) and pack.images.shape[1:] == (3, 112, 112)
    assert (pack.pairs == fold.pairs).all() and (pack.labels == fold.labels).all()

    torch.manual_seed(0)
    model = build_model(load_config(DEMO_CONFIG).model, num_classes=10).eval()
    # One fold has a single fold id: score it with 2 contiguous folds of 300 pairs each.
    pack.folds = np.repeat([0, 1], 300)
    result = evaluate_pair_set(model, pack, torch.device("cpu"), batch_size=128, flip=True)
    for score in ("xcos", "cos"):
        scores = result.scores[score]
        assert np.isfinite(scores).all() and len(scores) == 600
        metrics = result.metrics[score]
        # recomputed from the scores: brute-force thresholds, each from the other fold only
        accuracies, thresholds = reference_kfold(scores, fold.labels, pack.folds)
        assert metrics["fold_accuracies"] == pytest.approx(accuracies, abs=1e-12)
        assert metrics["accuracy"] == pytest.approx(np.mean(accuracies), abs=1e-12)
        assert metrics["accuracy_std"] == pytest.approx(np.std(accuracies), abs=1e-12)
        assert metrics["threshold"] == pytest.approx(np.mean(thresholds), abs=1e-9)
        assert metrics["auc"] == pytest.approx(reference_auc(scores, fold.labels), abs=1e-9)


def small_lfw_pairs(lfw, folder, per_half=5):
    """A View 2 pairs file of 2 folds, each the first matched then mismatched lines of fold 1."""
    lines = (lfw / "pairs.txt").read_text().splitlines()
    body = []
    for fold in range(2):
        start = 1 + fold * per_half
        body += lines[start : start + per_half] + lines[300 + start : 300 + start + per_half]
    path = folder / "pairs.txt"
    path.write_text("\n".join([f"2 {per_half}", *body]) + "\n")
    return path


@pytest.mark.slow
def test_prepare_command_and_test_mode_on_lfw_pairs(tmp_path, monkeypatch, capsys):
    from xcos.cli import main

    lfw = require_shared("data/lfw")
    pairs = small_lfw_pairs(lfw, tmp_path)
    out = tmp_path / "lfw_small.pack"
    args = [
        "prepare",
        "--pairs",
        str(pairs),
        "--images",
        str(lfw / "images"),
        "--out",
        str(out),
        "--select",
        "central",
        "--no-face",
        "center_crop",
    ]
    assert main(args) == 0
    assert "20 pairs" in capsys.readouterr().out
    pack = read_pack(str(out))
    assert len(pack) == 20 and pack.images.shape[1:] == (3, 112, 112)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["alignment"]["settings"]["select"] == "central"
    assert len(manifest["source"]["sha256"]) == 64

    # A pairs .txt given straight to test mode is aligned through the cache first.
    monkeypatch.setenv("XCOS_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = build_model(load_config(DEMO_CONFIG).model, num_classes=10)
    torch.save(model.state_dict(), tmp_path / "weights.pth")
    test = [
        "test",
        "-tc",
        str(DEMO_CONFIG),
        "--set",
        "data.synthetic=null",
        "--set",
        "test.pair_sets="
        + json.dumps(
            [{"type": "lfw", "path": str(pairs), "images": str(lfw / "images")}, str(out)]
        ),
        "--set",
        "test.figures=0",
        "-p",
        "weights.pth",
        "--out",
        "test",
        "--device",
        "cpu",
    ]
    assert main(test) == 0
    metrics = json.loads((tmp_path / "test/metrics.json").read_text())
    assert set(metrics) == {"lfw", "lfw_small"}
    assert metrics["lfw"]["xcos"]["accuracy"] == metrics["lfw_small"]["xcos"]["accuracy"]
    assert list((tmp_path / "cache" / "packs").glob("lfw-*.pack"))


@pytest.mark.slow
def test_prepare_command_aligns_a_csv_of_photos(tmp_path, capsys):
    from xcos.cli import main

    lfw = require_shared("data/lfw/images")
    names = [
        "Aaron_Peirsol/Aaron_Peirsol_0001.jpg",
        "Aaron_Peirsol/Aaron_Peirsol_0002.jpg",
        "Abdullah_Gul/Abdullah_Gul_0001.jpg",
        "Abdullah_Gul/Abdullah_Gul_0002.jpg",
    ]
    rows = ["path_a,path_b,label"]
    for k in range(10):  # 10 pairs over 4 photos: 10 contiguous folds of one pair
        a, b = names[k % 4], names[(k + 1 + k % 2) % 4]
        rows.append(f"{lfw / a},{lfw / b},{int(a.split('/')[0] == b.split('/')[0])}")
    (tmp_path / "mine.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "mine.pack"
    assert main(["prepare", "--csv", str(tmp_path / "mine.csv"), "--out", str(out)]) == 0
    assert "10 pairs, 4 distinct images, 0 centre-crop fallback(s)" in capsys.readouterr().out
    pack = read_pack(str(out))
    assert pack.images.shape == (4, 3, 112, 112) and len(pack) == 10
