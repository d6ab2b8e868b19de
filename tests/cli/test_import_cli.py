"""``xcos import``: dlib, ArcFace-family and released xCos weights; its errors."""

from __future__ import annotations

import torch

from tests.conftest import require_dlib_weights
from xcos.cli import main
from xcos.models import dlib_format
from xcos.models.backbones.arcface_torch import ArcFaceIResNet
from xcos.models.backbones.dlib_resnet import DlibResNet


def test_import_dlib_writes_weights_the_backbone_loads(tmp_path, capsys):
    dat = require_dlib_weights()
    out = tmp_path / "dlib_resnet.pth"
    assert main(["import", "dlib", "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    imported, parsed = DlibResNet(weights=str(out)).eval(), DlibResNet(weights=str(dat)).eval()
    faces = torch.rand(2, 3, 150, 150) * 2 - 1
    with torch.no_grad():
        assert torch.equal(imported(faces)["embedding"], parsed(faces)["embedding"])


def test_import_dlib_without_the_package_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(dlib_format.importlib.util, "find_spec", lambda name: None)
    assert main(["import", "dlib", "--out", str(tmp_path / "x.pth")]) == 2
    error = capsys.readouterr().err
    assert 'pip install -e ".[dlib]"' in error and len(error.strip().splitlines()) == 1


def test_import_of_a_truncated_dat_is_one_clear_line(tmp_path, capsys):
    dat = require_dlib_weights()
    broken = tmp_path / "broken.dat"
    broken.write_bytes(dat.read_bytes()[:100_000])
    code = main(["import", "dlib", "--weights", str(broken), "--out", str(tmp_path / "x.pth")])
    assert code == 2
    error = capsys.readouterr().err
    assert "broken.dat" in error and "truncated" in error
    assert not (tmp_path / "x.pth").exists()


def test_import_arcface_of_the_wrong_architecture_lists_mismatched_keys(tmp_path, capsys):
    weights = tmp_path / "backbone.pth"
    torch.save(ArcFaceIResNet(depth=18).state_dict(), weights)
    out = tmp_path / "r34.pth"
    args = ["import", "arcface", "--weights", str(weights), "--arch", "iresnet34", "--out"]
    assert main([*args, str(out)]) == 2
    error = capsys.readouterr().err
    assert "backbone.pth" in error and "iresnet34" in error and "layer" in error
    assert not out.exists()
    assert main([*args[:-2], "iresnet18", "--out", str(out)]) == 0
    assert out.is_file()


def test_import_arcface_needs_weights_and_arch(tmp_path, capsys):
    assert main(["import", "arcface", "--out", str(tmp_path / "x.pth")]) == 2
    assert "--weights" in capsys.readouterr().err


def test_import_xcos_needs_weights(tmp_path, capsys):
    assert main(["import", "xcos", "--out", str(tmp_path / "x.pth")]) == 2
    assert "--weights" in capsys.readouterr().err
