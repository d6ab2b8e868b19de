"""`xcos export --onnx`, ``export_onnx`` and ``Verifier.from_onnx``: onnxruntime gives the
same scores and maps as PyTorch, the metadata travels with the model, and a bad export or a
foreign file fails clearly."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from tests.conftest import require_module
from xcos import Verifier
from xcos.cli import main
from xcos.errors import CheckpointError, ConfigError
from xcos.explain import onnx as xcos_onnx
from xcos.explain.onnx import export_onnx
from xcos.explain.scorers import NO_SPINNING, OnnxScorer

TOLERANCE = 1e-4
FIELDS = ("score", "cos", "threshold")
MAPS = ("patch_cosine", "attention", "contribution", "difference")


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    """One export of the tiny checkpoint (several seconds, so the tests using it are slow),
    shared by this module's tests."""
    require_module("onnxruntime")
    verifier = Verifier.from_checkpoint(tiny_checkpoint, device="cpu")
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    report = export_onnx(verifier, path)
    return verifier, path, report


def synth_faces(tiny_synth, count: int) -> list[np.ndarray]:
    """``count`` aligned 64x64 faces of the tiny SynthFaces validation split."""
    from PIL import Image

    paths = sorted((tiny_synth / "val").rglob("*.png"))[:count]
    return [np.asarray(Image.open(path).convert("RGB")) for path in paths]


def assert_same(torch_result, onnx_result) -> None:
    for name in FIELDS:
        assert getattr(onnx_result, name) == pytest.approx(
            getattr(torch_result, name), abs=TOLERANCE
        ), name
    assert onnx_result.same == torch_result.same
    for name in MAPS:
        expected, got = getattr(torch_result, name), getattr(onnx_result, name)
        assert got.shape == expected.shape == (4, 4), name
        assert np.abs(got - expected).max() <= TOLERANCE, name


@pytest.mark.slow
def test_export_stores_the_metadata_and_passes_its_check(exported, tiny_checkpoint):
    _, path, report = exported
    assert path.is_file() and report.bytes == path.stat().st_size
    assert set(report.max_diff) == {"xcos", "cos", "patch_cosine", "attention", "difference"}
    assert report.worst <= TOLERANCE
    scorer = OnnxScorer(path)
    stored = torch.load(tiny_checkpoint, weights_only=True)["threshold"]
    assert scorer.input_size == 64 and scorer.face_template == "arcface"
    assert np.allclose(scorer.cell_edges, [0, 8.5, 24.5, 40.5, 64])
    assert scorer.threshold == pytest.approx(stored)
    digest = hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()
    assert scorer.provenance == {
        "backbone": "ir_se",
        "checkpoint": "best.pth",
        "checkpoint_sha256": digest,
        "opset": 18,
    }
    assert scorer.metadata["xcos_version"] and scorer.metadata["grid"] == [4, 4]
    assert scorer.runtime_info()["runtime"].startswith("onnxruntime ")
    assert scorer.runtime_info()["grid"] == [4, 4]
    options = scorer.session.get_session_options()  # idle threads leave the cores to others
    assert options.get_session_config_entry(NO_SPINNING) == "0"
    onnx = require_module("onnx")
    model = onnx.load(str(path))
    assert {entry.domain: entry.version for entry in model.opset_import}[""] == 18
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value  # the batch is dynamic


@pytest.mark.slow
def test_from_onnx_explains_like_pytorch(exported, tiny_synth):
    verifier, path, _ = exported
    on_onnx = Verifier.from_onnx(path)
    a, b = synth_faces(tiny_synth, 2)
    assert_same(verifier.explain(a, b), on_onnx.explain(a, b))
    assert on_onnx.explain(a, a).score == pytest.approx(1.0, abs=1e-5)
    info = on_onnx.info
    assert info["runtime"].startswith("onnxruntime ") and info["onnx"] == path.name
    assert info["onnx_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    for key in ("backbone", "grid", "input_size", "face_template", "threshold", "checkpoint"):
        assert info[key] == verifier.info[key], key
    assert Verifier.from_onnx(path, threshold=0.3).threshold == 0.3  # an explicit one wins


class CountingSession:
    """An onnxruntime session that records the batch size of every run."""

    def __init__(self, session) -> None:
        self.session, self.batches = session, []

    def run(self, outputs, feeds):
        self.batches.append(len(feeds["faces_a"]))
        return self.session.run(outputs, feeds)


@pytest.mark.slow
@pytest.mark.parametrize("pairs", [1, 5])
def test_a_batch_of_pairs_in_one_run(exported, tiny_synth, pairs):
    verifier, path, _ = exported
    on_onnx = Verifier.from_onnx(path)
    faces = synth_faces(tiny_synth, 2 * pairs)
    faces = list(zip(faces[0::2], faces[1::2], strict=True))
    session = on_onnx.scorer.session
    on_onnx.scorer.session = counting = CountingSession(session)
    results = on_onnx.explain_faces(faces)
    assert counting.batches == [pairs] and len(results) == pairs  # one run for the batch
    for expected, got in zip(verifier.explain_faces(faces), results, strict=True):
        assert_same(expected, got)


@pytest.mark.slow
def test_export_command(tiny_checkpoint, tmp_path, capsys):
    require_module("onnxruntime")
    out = tmp_path / "cli.onnx"
    args = ["export", "-p", str(tiny_checkpoint), "--onnx", str(out), "--threshold", "0.2"]
    assert main(args) == 0
    captured = capsys.readouterr()
    line = captured.out.strip()
    assert "\n" not in line and line.startswith(f"{out}: opset 18, ")
    assert "threshold 0.2000" in line and "max diff" in line
    assert OnnxScorer(out).threshold == 0.2
    assert OnnxScorer(out).metadata["threshold_source"] == "--threshold"
    assert captured.err == ""  # the exporter's chatter stays out of the console


def test_export_command_rejects_an_opset_it_cannot_write(tiny_checkpoint, tmp_path, capsys):
    require_module("onnxruntime")
    out = tmp_path / "old.onnx"
    assert main(["export", "-p", str(tiny_checkpoint), "--onnx", str(out), "--opset", "11"]) == 2
    assert "--opset: expected 18 to" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(ConfigError):
        xcos_onnx.check_opset(17)


@pytest.mark.slow
def test_a_file_that_is_not_an_xcos_export(exported, tmp_path):
    onnx = require_module("onnx")
    _, path, _ = exported
    model = onnx.load(str(path))
    del model.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    foreign.write_bytes(model.SerializeToString())
    with pytest.raises(CheckpointError, match="not one written by `xcos export --onnx`"):
        Verifier.from_onnx(foreign)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_text("not a model")
    with pytest.raises(CheckpointError, match=r"garbage\.onnx.*not an ONNX model"):
        OnnxScorer(garbage)
    with pytest.raises(FileNotFoundError, match=r"missing\.onnx"):
        OnnxScorer(tmp_path / "missing.onnx")
    broken = tmp_path / "broken.onnx"
    entry = model.metadata_props.add()
    entry.key, entry.value = "xcos", json.dumps({"input_size": 64})
    broken.write_bytes(model.SerializeToString())
    with pytest.raises(CheckpointError, match="lacks cell_edges, face_template"):
        OnnxScorer(broken)


def traced_again(path):
    """The graph of an export, without its metadata: what ``_trace`` returns, in no time."""
    model = require_module("onnx").load(str(path))
    del model.metadata_props[:]
    return model


@pytest.mark.slow
def test_a_mismatch_is_an_error_and_writes_nothing(exported, tmp_path, monkeypatch):
    verifier, path, _ = exported
    real = xcos_onnx.compare_runtimes

    def off_in_attention(*args):
        diffs = real(*args)
        return {**diffs, "attention": diffs["attention"] + 3e-4}

    monkeypatch.setattr(xcos_onnx, "compare_runtimes", off_in_attention)
    monkeypatch.setattr(xcos_onnx, "_trace", lambda *args: traced_again(path))
    out = tmp_path / "bad.onnx"
    with pytest.raises(CheckpointError, match=r"'attention' differs by 0\.0003.*nothing was"):
        export_onnx(verifier, out)
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary one


def test_missing_onnxruntime_says_how_to_install(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def without_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_onnxruntime)
    from xcos.errors import SetupError

    with pytest.raises(SetupError, match=r'pip install -e "\.\[onnx\]"'):
        OnnxScorer(tmp_path / "model.onnx")


@pytest.mark.slow
def test_serve_onnx_answers_like_pytorch(exported, tiny_synth, monkeypatch):
    """`xcos serve --onnx`: the API on onnxruntime gives PyTorch's scores and maps."""
    import io

    import uvicorn
    from fastapi.testclient import TestClient
    from PIL import Image

    verifier, path, _ = exported
    runs = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: runs.append(app))
    assert main(["serve", "--onnx", str(path), "--threshold", "0.3"]) == 0
    a, b = synth_faces(tiny_synth, 2)
    uploads = {}
    for name, face in (("image_a", a), ("image_b", b)):
        buffer = io.BytesIO()
        Image.fromarray(face).save(buffer, format="PNG")
        uploads[name] = (f"{name}.png", buffer.getvalue(), "image/png")
    with TestClient(runs[0]) as client:
        model = client.get("/api/v1/model").json()
        body = client.post("/api/v1/verify", files=uploads).json()
    assert model["runtime"].startswith("onnxruntime ") and model["onnx"] == path.name
    expected = verifier.explain(a, b)
    assert body["score"] == pytest.approx(expected.score, abs=TOLERANCE)
    assert body["cos"] == pytest.approx(expected.cos, abs=TOLERANCE)
    assert body["threshold"] == 0.3 and body["same"] == (expected.score > 0.3)
    for name in MAPS:
        assert np.abs(np.array(body[name]) - getattr(expected, name)).max() <= TOLERANCE, name
