"""Verifier / Explanation API and the `xcos explain` command."""

import json

import numpy as np
import pytest
import torch
from matplotlib.collections import QuadMesh
from PIL import Image

from xcos import Verifier
from xcos.cli import main


@pytest.fixture
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint


def faces(tiny_synth):
    folder = sorted((tiny_synth / "val").iterdir())[0]
    return sorted(folder.glob("*.png"))[:2]


def test_explain_fields_and_threshold_from_the_checkpoint(checkpoint, tiny_synth):
    stored = torch.load(checkpoint, weights_only=True)["threshold"]
    verifier = Verifier.from_checkpoint(checkpoint, device="cpu")
    a, b = faces(tiny_synth)
    result = verifier.explain(a, b)
    assert result.threshold == pytest.approx(stored)
    assert result.same == (result.score > stored)
    assert result.patch_cosine.shape == result.attention.shape == (4, 4)
    assert np.allclose(result.contribution, result.patch_cosine * result.attention)
    assert result.contribution.sum() == pytest.approx(result.score, abs=1e-5)
    assert result.faces[0].shape == (64, 64, 3) and result.faces[0].dtype == np.uint8
    assert np.allclose(result.difference, result.attention * (1 - result.patch_cosine))
    assert result.difference.sum() == pytest.approx(1 - result.score, abs=1e-5)
    assert np.allclose(result.cell_edges, [0, 8.5, 24.5, 40.5, 64])  # IR cells: 16o + 0.5
    figure = result.figure()
    titles = [axis.get_title() for axis in figure.axes if axis.get_title()]
    assert titles[-1] == "difference (pulls the score down)" and len(titles) == 5


def check_most_different(saved: dict) -> None:
    """``most_different_cells``: the 3 cells of the highest difference, highest first."""
    difference = np.array(saved["difference"])
    cells = saved["most_different_cells"]
    assert len(cells) == 3 and len({tuple(cell) for cell in cells}) == 3
    values = [difference[row, column] for row, column in cells]
    assert values == sorted(values, reverse=True)
    assert values == pytest.approx(np.sort(difference.ravel())[::-1][:3].tolist())


def test_as_dict_has_the_difference_and_the_most_different_cells(checkpoint, tiny_synth):
    verifier = Verifier.from_checkpoint(checkpoint, device="cpu")
    result = verifier.explain(*faces(tiny_synth))
    saved = result.as_dict()
    assert np.allclose(saved["difference"], result.difference)
    assert saved["most_different_cells"] == result.most_different_cells
    check_most_different(json.loads(json.dumps(saved)))


def test_inputs_as_paths_pil_arrays_tensors_and_grayscale(checkpoint, tiny_synth):
    verifier = Verifier.from_checkpoint(checkpoint, threshold=0.1, device="cpu")
    a, b = faces(tiny_synth)
    reference = verifier.explain(a, b).score
    pil_a, pil_b = Image.open(a), Image.open(b)
    assert verifier.explain(pil_a, pil_b).score == pytest.approx(reference, abs=1e-6)
    assert verifier.explain(np.asarray(pil_a), np.asarray(pil_b)).score == pytest.approx(
        reference, abs=1e-6
    )
    tensor_a = torch.from_numpy(np.array(pil_a)).permute(2, 0, 1).float() / 127.5 - 1
    tensor_b = torch.from_numpy(np.array(pil_b)).permute(2, 0, 1).float() / 127.5 - 1
    assert verifier.explain(tensor_a, tensor_b).score == pytest.approx(reference, abs=1e-5)
    gray = verifier.explain(pil_a.convert("L"), pil_b)
    assert gray.faces[0].shape == (64, 64, 3)
    assert verifier.explain(a, a).score == pytest.approx(1.0, abs=1e-5)  # identical: 1
    assert verifier.threshold == 0.1  # an explicit threshold wins


def test_explain_command_writes_figure_and_json(checkpoint, tiny_synth, tmp_path, capsys):
    a, b = faces(tiny_synth)
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"set": {"xcos": {"threshold": 0.25}, "cos": {}}}))
    args = [
        "explain",
        str(a),
        str(b),
        "-p",
        str(checkpoint),
        "--metrics",
        str(metrics),
        "--out",
        str(tmp_path / "pair.png"),
        "--json",
        str(tmp_path / "pair.json"),
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    saved = json.loads((tmp_path / "pair.json").read_text())
    assert set(saved) >= {"score", "same", "threshold", "patch_cosine", "attention", "contribution"}
    assert saved["threshold"] == 0.25 and len(saved["patch_cosine"]) == 4
    assert np.array(saved["difference"]).shape == (4, 4)
    assert np.sum(saved["difference"]) == pytest.approx(1 - saved["score"], abs=1e-5)
    check_most_different(saved)
    assert Image.open(tmp_path / "pair.png").size[0] > 300
    assert "threshold 0.2500" in capsys.readouterr().out


def test_bad_inputs(checkpoint, tiny_synth, tmp_path, capsys):
    a, _ = faces(tiny_synth)
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    assert main(["explain", str(a), str(bad), "-p", str(checkpoint), "--device", "cpu"]) == 2
    assert "face B of pair 0: cannot decode image" in capsys.readouterr().err
    flat = tmp_path / "flat.png"
    Image.new("RGB", (200, 160), (120, 120, 120)).save(flat)
    assert main(["explain", str(flat), str(a), "-p", str(checkpoint), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "face A of pair 0" in err and "flat.png" in err  # no face detected: names the image
    state = torch.load(checkpoint, weights_only=True)["model"]
    no_head = {k: v for k, v in state.items() if not k.startswith("head.")}
    torch.save(no_head, tmp_path / "backbone_only.pth")
    assert main(["explain", str(a), str(a), "-p", str(tmp_path / "backbone_only.pth")]) == 2
    assert "has no xCos head" in capsys.readouterr().err
    verifier = Verifier.from_checkpoint(checkpoint, device="cpu")
    verifier.threshold = None
    with pytest.raises(ValueError, match="no decision threshold"):
        verifier.explain(a, a)


def test_overlay_layout_blends_both_maps_over_both_faces(checkpoint, tiny_synth, tmp_path):
    result = Verifier.from_checkpoint(checkpoint, device="cpu").explain(*faces(tiny_synth))
    figure = result.figure("overlay")
    panels = [axis for axis in figure.axes if axis.get_title()]
    titles = sorted(axis.get_title() for axis in panels)
    names = ("patch cosine", "attention", "difference")
    assert titles == sorted(f"{name} over face {side}" for name in names for side in "AB")
    for axis in panels:
        (face,) = axis.get_images()
        assert face.get_array().shape == (64, 64, 3)  # the aligned face
        (overlay,) = [c for c in axis.collections if isinstance(c, QuadMesh)]
        assert overlay.get_array().shape == (4, 4)  # the map, one flat colour per cell
        assert np.allclose(overlay.get_coordinates()[0, :, 0], result.cell_edges)
        assert 0 < overlay.get_alpha() < 1
    cosine_panel = next(a for a in panels if a.get_title().startswith("patch"))
    norm = next(c for c in cosine_panel.collections if isinstance(c, QuadMesh)).norm
    assert norm.vcenter == pytest.approx(result.threshold)  # centred on what decides
    assert len(figure.axes) == 9  # six panels and one colour bar per row
    figure.savefig(tmp_path / "overlay.png")
    with pytest.raises(ValueError, match="layout"):
        result.figure("sideways")
    args = ["explain", *map(str, faces(tiny_synth)), "-p", str(checkpoint), "--device", "cpu"]
    out = tmp_path / "cli.png"
    assert main([*args, "--threshold", "0.3", "--layout", "overlay", "--out", str(out)]) == 0
    assert Image.open(out).size[1] > 400


def test_a_checkpoint_missing_weights_is_reported(checkpoint, tmp_path, caplog):
    state = torch.load(checkpoint, weights_only=True)
    dropped = next(key for key in state["model"] if key.startswith("head.attention"))
    del state["model"][dropped]
    torch.save(state, tmp_path / "partial.pth")
    with caplog.at_level("WARNING", logger="xcos.explain.verifier"):
        Verifier.from_checkpoint(tmp_path / "partial.pth", device="cpu")
    assert f"1 parameter(s) not in the checkpoint: ['{dropped}']" in caplog.text


def test_align_never_refuses_a_photo_instead_of_resizing_it(checkpoint, tiny_synth):
    from xcos.errors import UnalignedImageError

    verifier = Verifier.from_checkpoint(checkpoint, threshold=0.1, device="cpu", align="never")
    a, b = faces(tiny_synth)
    assert verifier.explain(a, b).faces[0].shape == (64, 64, 3)  # aligned faces pass as they are
    photo = np.asarray(Image.open(b).resize((48, 64)))
    refused = r"face B of pair 0: a 48x64 image, and align='never' takes aligned 64x64"
    with pytest.raises(UnalignedImageError, match=refused):
        verifier.explain(a, photo)


def test_info_says_what_the_model_is_and_where_the_threshold_came_from(checkpoint, tmp_path):
    import hashlib

    info = Verifier.from_checkpoint(checkpoint, device="cpu").info
    assert info["checkpoint"] == checkpoint.name  # the name only, never the server's path
    assert info["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert info["threshold_source"] == "checkpoint (validation)"
    assert (info["input_size"], info["grid"], info["face_template"]) == (64, [4, 4], "arcface")
    assert info["backbone"] == "ir_se" and info["runtime"].startswith("torch ")
    given = Verifier.from_checkpoint(checkpoint, threshold=0.25, device="cpu").info
    assert (given["threshold"], given["threshold_source"]) == (0.25, "--threshold")
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"lfw": {"xcos": {"threshold": 0.3}}}))
    from_file = Verifier.from_checkpoint(checkpoint, metrics=metrics, device="cpu").info
    assert (from_file["threshold"], from_file["threshold_source"]) == (0.3, "metrics: metrics.json")


def test_most_different_regions_name_the_cells_and_their_share(checkpoint, tiny_synth):
    result = Verifier.from_checkpoint(checkpoint, device="cpu").explain(*faces(tiny_synth))
    regions = result.as_dict()["most_different_regions"]
    assert [entry["cell"] for entry in regions] == result.most_different_cells
    total = result.difference.sum()
    for entry in regions:
        row, column = entry["cell"]
        assert entry["share"] == pytest.approx(result.difference[row, column] / total)
        assert entry["region"] == result.cell_regions[row][column]
    # the 4x4 IR grid of a 64 px ArcFace face (edges 0, 8.5, 24.5, 40.5, 64): the left eye
    # (21.9, 29.5) and the nose tip (32.0, 41.0) fall in row 2, the mouth (32.0, 52.7) in row 3;
    # the right eye (42.0, 29.4) sits in the wide last column, which it covers too little
    assert result.cell_regions[2] == [None, "left_eye", "nose", None]
    assert result.cell_regions[3] == [None, None, "mouth", None]
    assert result.cell_regions[0] == result.cell_regions[1] == [None] * 4
