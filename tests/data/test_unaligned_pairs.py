"""No silent wrong answers: images that are not aligned faces of the model's input size are
refused with the file, its size, the expected size and the `xcos prepare` command, never
resized (a 92x112 photo resized to 112x112 is not an aligned face: dlib's cosine scored 87.7%
on such a list against 99.5% once it was aligned)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import DEMO_CONFIG
from xcos.cli import main
from xcos.config import load_config
from xcos.data.image_folder import ImageFolderPairs
from xcos.data.images import image_size, read_face
from xcos.data.pair_set_specs import load_pair_set
from xcos.data.pair_sets import PairSet
from xcos.errors import DataError, UnalignedImageError
from xcos.evaluation.evaluator import evaluate_pair_set
from xcos.models.xcos_model import build_model

CPU = torch.device("cpu")
PHOTO = (92, 112)  # (width, height) of the public set's grayscale faces
SIZE = 112  # the demo model's input size


def write_image(path, size, seed=0):
    """A random grayscale image of ``size`` (width, height), like the public set's photos."""
    width, height = size
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "L").save(path)
    return path


def write_pair_csv(folder, sizes):
    """``folder/pairs.csv`` over images ``img/<k>.png`` of the given sizes (k-th image of the
    k-th size): pairs (0, 1) same and (0, 2), (1, 3) ... alternating labels."""
    names = [
        write_image(folder / "img" / f"{k}.png", size, seed=k).name for k, size in enumerate(sizes)
    ]
    rows = [f"img/{names[k]},img/{names[(k + 1) % len(names)]},{k % 2}" for k in range(len(names))]
    csv_path = folder / "pairs.csv"
    # 5 copies of the pairs: every one of the 10 folds holds pairs
    csv_path.write_text("\n".join(["path_a,path_b,label", *rows * 5]) + "\n")
    return csv_path


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(load_config(DEMO_CONFIG).model, num_classes=4).eval()


def test_image_size_reads_the_header_as_decoded(tmp_path):
    assert image_size(write_image(tmp_path / "a.png", PHOTO)) == PHOTO
    with pytest.raises(UnalignedImageError, match=r"a\.png' is 92x112 pixels; .*aligned 112x112"):
        read_face(tmp_path / "a.png", SIZE)
    assert read_face(write_image(tmp_path / "b.png", (SIZE, SIZE)), SIZE).shape == (SIZE, SIZE, 3)


def test_csv_of_unaligned_photos_is_refused_by_the_evaluator(tmp_path, model):
    csv_path = write_pair_csv(tmp_path, [PHOTO] * 4)
    pair_set = load_pair_set(str(csv_path), "test.pair_sets.0")
    with pytest.raises(UnalignedImageError) as refused:
        evaluate_pair_set(model, pair_set, CPU)
    message = str(refused.value)
    assert "4 of 4 image(s) are not aligned 112x112 faces" in message
    assert re.search(r"img/0\.png' is 92x112 pixels", message), message
    prepare = f"xcos prepare --csv {csv_path} --template arcface --out {tmp_path / 'pairs.pack'}"
    assert prepare in message, message
    # the config alternative it names is a spec load_pair_set accepts
    spec = json.loads(re.search(r"the pair set (\{.*\}) aligns", message).group(1))
    assert spec == {
        "type": "csv",
        "path": str(csv_path),
        "align": {"template": "arcface", "image_size": 112},
    }
    # a single wrong image among aligned faces is found and named too, not resized
    mixed = load_pair_set(str(write_pair_csv(tmp_path / "mixed", [(SIZE, SIZE)] * 3 + [PHOTO])))
    with pytest.raises(UnalignedImageError, match=r"1 of 4 image\(s\).*img/3\.png' is 92x112"):
        evaluate_pair_set(model, mixed, CPU)
    with pytest.raises(UnalignedImageError, match=r"img/3\.png' is 92x112.*xcos prepare --csv"):
        mixed.image(3, SIZE)  # the lazy path (figures, cached features) refuses it as well


def test_csv_of_aligned_faces_is_scored(tmp_path, model):
    pair_set = load_pair_set(str(write_pair_csv(tmp_path, [(SIZE, SIZE)] * 4)))
    result = evaluate_pair_set(model, pair_set, CPU)
    assert result.scores["xcos"].shape == (20,) and np.isfinite(result.scores["xcos"]).all()
    assert pair_set.image(0, SIZE).shape == (SIZE, SIZE, 3)


def test_faces_of_another_size_are_refused_not_resized(tmp_path, model):
    faces = np.zeros((2, 3, 150, 150), dtype=np.uint8)  # a pack aligned for dlib's 150x150 chip
    pack = PairSet("dlib_pack", faces, np.array([[0, 1]] * 10), np.tile([1, 0], 5), np.arange(10))
    pack.source = str(tmp_path / "dlib.pack")
    for refuse in (lambda: pack.image(0, SIZE), lambda: evaluate_pair_set(model, pack, CPU)):
        with pytest.raises(UnalignedImageError, match=r"150x150 faces, the model takes 112x112"):
            refuse()
    with pytest.raises(UnalignedImageError, match=r"xcos prepare .* --template arcface --out"):
        pack.check_image_size(SIZE, "arcface")


def test_test_mode_refuses_an_unaligned_csv_in_one_line(tmp_path, model, monkeypatch, capsys):
    csv_path = write_pair_csv(tmp_path / "photos", [PHOTO] * 4)
    torch.save(model.state_dict(), tmp_path / "weights.pth")
    monkeypatch.chdir(tmp_path)
    args = ["test", "-tc", str(DEMO_CONFIG), "--set", "data.synthetic=null"]
    args += ["--set", "test.figures=0", "-p", "weights.pth", "--device", "cpu"]
    pair_sets = "test.pair_sets=" + json.dumps([str(csv_path)])
    assert main([*args, "--set", pair_sets, "--out", "refused"]) == 2
    error = capsys.readouterr().err
    assert "error: pairs: 4 of 4 image(s)" in error and "0.png' is 92x112 pixels" in error
    assert f"xcos prepare --csv {csv_path} --template arcface" in error
    assert not (tmp_path / "refused" / "metrics.json").exists()
    aligned = write_pair_csv(tmp_path / "faces", [(SIZE, SIZE)] * 4)
    pair_sets = "test.pair_sets=" + json.dumps([str(aligned)])
    assert main([*args, "--set", pair_sets, "--out", "scored"]) == 0
    assert "pairs" in json.loads((tmp_path / "scored" / "metrics.json").read_text())


def test_report_refuses_an_unaligned_csv(tiny_checkpoint, tmp_path, capsys):
    csv_path = write_pair_csv(tmp_path, [PHOTO] * 4)
    out = tmp_path / "report"
    args = ["report", "-p", str(tiny_checkpoint), "--pairs", str(csv_path), "--out", str(out)]
    assert main([*args, "--threshold", "0.5", "--device", "cpu"]) == 2
    error = capsys.readouterr().err
    # the tiny model takes 64x64 faces: the command asks for that size
    assert "0.png' is 92x112 pixels; expected an aligned 64x64 face" in error, error
    assert f"xcos prepare --csv {csv_path} --template arcface --size 64" in error, error
    assert not (out / "index.html").exists()


def test_training_folder_of_unaligned_photos_is_refused(tmp_path):
    for identity in range(2):
        for k in range(2):
            write_image(tmp_path / "photos" / f"id{identity}" / f"{k}.png", PHOTO, seed=k)
    with pytest.raises(DataError, match=r"data\.train: image '.*id0/0\.png' is 92x112 pixels; "):
        ImageFolderPairs(str(tmp_path / "photos"), image_size=SIZE)


def test_training_folder_refuses_each_wrongly_sized_face_it_reads(tmp_path):
    root = tmp_path / "faces"
    for identity in range(2):
        for k in range(2):
            write_image(root / f"id{identity}" / f"{k}.png", (16, 16), seed=k)
    data = ImageFolderPairs(str(root), image_size=16, flip=False)
    assert data[0]["image_a"].shape == (3, 16, 16)  # aligned faces of the right size load
    write_image(root / "id1" / "1.png", (16, 20))
    index = data.paths.index(root / "id1" / "1.png")
    with pytest.raises(UnalignedImageError, match=r"id1/1\.png' is 16x20 pixels.*16x16 face"):
        data.load(index, False)


def test_training_refuses_an_unaligned_validation_set_before_the_first_epoch(tiny_config, tmp_path):
    from xcos.engine.trainer import Trainer

    csv_path = write_pair_csv(tmp_path / "photos", [PHOTO] * 4)
    config = tiny_config({"validation": {"pair_sets": [str(csv_path)]}})
    with pytest.raises(UnalignedImageError, match=r"0\.png' is 92x112 pixels.*xcos prepare"):
        Trainer(config, tmp_path / "run", CPU)
