"""Built-in models (``xcos.explain.builtin``): a shipped head on a recognizer whose weights come
from its package, so that real photos are explained with no checkpoint and no training."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import require_dlib_weights, require_shared
from xcos.checkpoints import write_checkpoint
from xcos.cli import main
from xcos.config import ModelConfig, from_dict
from xcos.errors import CheckpointError, ConfigError
from xcos.explain.builtin import builtin_path, load_builtin, write_builtin
from xcos.explain.verifier import Verifier
from xcos.models.xcos_model import build_model, split_descriptors

DLIB_L2 = {
    "backbone": {"type": "dlib_resnet", "level": 2, "weights": "auto"},
    "freeze_backbone": True,
    "cos": "embedding",
    "head": {"type": "xcos", "grid_channels": 16, "grid_hidden": 32},
}


def fake_run(tmp_path, model_cfg: dict, threshold: float | None = 0.9):
    """A checkpoint as ``xcos train`` writes it, with a randomly initialised head."""
    torch.manual_seed(0)
    model = build_model(from_dict(ModelConfig, model_cfg, "model"))
    path = tmp_path / "best.pth"
    state = {"model": model.state_dict(), "config": {"model": model_cfg}, "threshold": threshold}
    write_checkpoint(state, path)
    return model.eval(), path


def test_a_builtin_file_holds_the_head_alone_and_scores_like_the_run(tmp_path, monkeypatch):
    require_dlib_weights()
    model, checkpoint = fake_run(tmp_path, DLIB_L2)
    out = write_builtin(checkpoint, tmp_path / "weights" / "dlib.pth", "a test set")
    stored = torch.load(out, weights_only=True)
    assert stored["model"] and all(key.startswith("head.") for key in stored["model"])
    assert out.stat().st_size < checkpoint.stat().st_size / 10  # no recognizer weights
    monkeypatch.setattr("xcos.explain.builtin.WEIGHTS", tmp_path / "weights")
    loaded, threshold, provenance = load_builtin("dlib")
    assert threshold == 0.9 and provenance["trained_on"] == "a test set"
    faces = torch.rand(4, 3, 150, 150) * 2 - 1
    with torch.no_grad():
        expected = model.compare(*split_descriptors(model.embed(faces)))
        got = loaded.compare(*split_descriptors(loaded.embed(faces)))
    for key in ("xcos", "cos", "difference"):
        assert torch.allclose(expected[key], got[key], atol=1e-6), key
    verifier = Verifier.pretrained("dlib", threshold=0.5)
    assert verifier.threshold == 0.5 and verifier.info["threshold_source"] == "--threshold"


def test_builtin_files_are_refused_when_they_cannot_work(tmp_path):
    require_dlib_weights()
    own_weights = {**DLIB_L2, "backbone": {**DLIB_L2["backbone"], "weights": None}}
    _, checkpoint = fake_run(tmp_path, own_weights)
    with pytest.raises(CheckpointError, match="load by themselves"):
        write_builtin(checkpoint, tmp_path / "x.pth", "x")
    _, checkpoint = fake_run(tmp_path, DLIB_L2, threshold=None)
    with pytest.raises(CheckpointError, match="threshold"):
        write_builtin(checkpoint, tmp_path / "x.pth", "x")
    with pytest.raises(ConfigError, match="built-in models: dlib"):
        builtin_path("arcface")


@pytest.mark.slow
def test_explain_two_lfw_photos_with_no_checkpoint(tmp_path, capsys):
    """The README's real-face example: `xcos explain a.jpg b.jpg`, nothing else."""
    require_dlib_weights()
    lfw = require_shared("data/lfw/images")
    assert builtin_path("dlib").is_file(), "the built-in dlib head is not in the package"
    # people of peopleDevTest: identities the shipped head never saw
    a, b = (lfw / "Abdullah_Gul" / f"Abdullah_Gul_000{k}.jpg" for k in (1, 2))
    other = lfw / "Abdullatif_Sener" / "Abdullatif_Sener_0001.jpg"
    for image, same in ((b, True), (other, False)):
        out = tmp_path / f"{same}.json"
        assert main(["explain", str(a), str(image), "--json", str(out), "--device", "cpu"]) == 0
        printed = capsys.readouterr()
        assert "model: built-in dlib" in printed.err and "peopleDevTrain" in printed.err
        result = json.loads(out.read_text())
        assert result["same"] is same, (image, result["score"], result["threshold"])
        assert len(result["difference"]) == 8  # the level-2 grid


def test_serve_without_a_checkpoint_serves_the_builtin_model(monkeypatch, capsys):
    import uvicorn
    from fastapi.testclient import TestClient

    require_dlib_weights()
    runs = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: runs.append(app))
    assert main(["serve", "--device", "cpu"]) == 0
    printed = capsys.readouterr()
    assert "model: built-in dlib" in printed.err and "serving built-in:dlib" in printed.out
    model = TestClient(runs[0]).get("/api/v1/model").json()
    assert model["backbone"] == "dlib_resnet" and model["grid"] == [8, 8]
    assert model["threshold_source"] == "built-in model 'dlib' (validation)"
