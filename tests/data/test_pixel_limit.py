"""Decompression bombs: an image over ``--max-pixels`` is refused from its header, before it is
decoded, by the readers, the aligner, the Verifier, `xcos explain` and `xcos prepare`."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFile

from tests.helpers.bombs import grey_png
from xcos import Verifier
from xcos.cli import main
from xcos.data.align import FaceAligner, load_bounded_rgb
from xcos.data.images import DEFAULT_MAX_PIXELS, decode_rgb, read_face, read_rgb
from xcos.data.limits import check_pixels
from xcos.errors import BadImageError, ImageTooLargeError, NoFaceError


@pytest.fixture(scope="module")
def bomb_bytes() -> bytes:
    """144 MP of grey in about 165 KB: decoding it would take gigabytes with RGB conversion."""
    return grey_png(12000, 12000)


@pytest.fixture
def bomb(tmp_path, bomb_bytes):
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_bytes)
    return path


@pytest.fixture
def no_decoding(monkeypatch):
    """Any attempt to decode pixel data fails the test: refusals must come from the header."""

    def load(self):
        raise AssertionError(f"decoded a {self.size} image")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


def test_the_default_limit_is_40_megapixels():
    assert DEFAULT_MAX_PIXELS == 40_000_000
    check_pixels((8000, 5000), "x", DEFAULT_MAX_PIXELS)  # exactly the limit passes
    with pytest.raises(ImageTooLargeError):
        check_pixels((8001, 5000), "x", DEFAULT_MAX_PIXELS)
    check_pixels((10**6, 10**6), "x", None)  # None: no limit


def test_readers_refuse_a_bomb_from_its_header(bomb, bomb_bytes, no_decoding):
    with pytest.raises(ImageTooLargeError, match=r"bomb\.png.*12000x12000.*144\.0 megapixels"):
        read_rgb(bomb)
    with pytest.raises(ImageTooLargeError, match="image_a"):
        decode_rgb(bomb_bytes, "image_a")
    with pytest.raises(ImageTooLargeError, match="bomb"):
        read_face(bomb, 112)
    assert issubclass(ImageTooLargeError, BadImageError)  # an image xcos will not decode


def test_the_limit_is_exact_and_can_be_lifted(tmp_path):
    path = tmp_path / "small.png"
    Image.new("RGB", (20, 10), (200, 10, 10)).save(path)
    assert read_rgb(path, max_pixels=200).shape == (10, 20, 3)
    with pytest.raises(ImageTooLargeError, match="20x10"):
        read_rgb(path, max_pixels=199)
    assert read_rgb(path, max_pixels=None)[0, 0].tolist() == [200, 10, 10]
    buffer = io.BytesIO()
    Image.new("L", (20, 10), 7).save(buffer, format="PNG")
    assert decode_rgb(buffer.getvalue(), "upload", max_pixels=200)[0, 0].tolist() == [7, 7, 7]


def test_the_aligner_refuses_files_bytes_and_arrays_over_its_limit(bomb, bomb_bytes, no_decoding):
    with pytest.raises(ImageTooLargeError, match="bomb"):
        load_bounded_rgb(bomb)
    with pytest.raises(ImageTooLargeError, match="upload"):
        load_bounded_rgb(bomb_bytes, name="upload")
    with pytest.raises(ImageTooLargeError, match="<array>"):
        load_bounded_rgb(np.zeros((100, 100, 3), np.uint8), pixel_limit=9999)
    aligner = FaceAligner(pixel_limit=10**9)  # a higher limit is honoured: the header passes
    assert aligner.settings()["pixel_limit"] == 10**9


def test_the_verifier_refuses_a_bomb_and_names_the_face(tiny_checkpoint, bomb, bomb_bytes):
    verifier = Verifier.from_checkpoint(tiny_checkpoint, threshold=0.5, device="cpu")
    with pytest.raises(ImageTooLargeError, match=r"^image 'image_a' is 12000x12000"):
        verifier.face(bomb_bytes, "image_a")
    with pytest.raises(ImageTooLargeError, match=r"face A of pair 0: .*bomb\.png"):
        verifier.explain(bomb, bomb)
    small = Verifier.from_checkpoint(tiny_checkpoint, threshold=0.5, device="cpu", max_pixels=100)
    with pytest.raises(ImageTooLargeError, match="image_b"):
        small.face(np.zeros((64, 64, 3), np.uint8), "image_b")


def test_a_blank_upload_is_no_face_and_keeps_its_class(tiny_checkpoint):
    verifier = Verifier.from_checkpoint(tiny_checkpoint, threshold=0.5, device="cpu")
    buffer = io.BytesIO()
    Image.new("RGB", (200, 160), (128, 128, 128)).save(buffer, format="PNG")
    with pytest.raises(NoFaceError, match=r"^image_b: no face found in 'image_b'") as caught:
        verifier.face(buffer.getvalue(), "image_b")
    assert "center_crop" not in str(caught.value)  # the aligner's hint for packs is not for users
    with pytest.raises(BadImageError, match=r"^cannot decode image 'image_a': not an image file$"):
        verifier.face(b"GIF89a not really", "image_a")


def test_explain_command_refuses_a_bomb_in_one_line(tiny_checkpoint, bomb, capsys, no_decoding):
    argv = ["explain", str(bomb), str(bomb), "-p", str(tiny_checkpoint), "--device", "cpu"]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "bomb.png" in error and "--max-pixels" in error


def test_prepare_command_honours_max_pixels(tmp_path, capsys):
    faces = []
    for k in range(2):
        path = tmp_path / f"photo{k}.png"
        Image.new("RGB", (300, 200), (120, 90, 80)).save(path)
        faces.append(path)
    csv = tmp_path / "pairs.csv"
    csv.write_text(f"path_a,path_b,label,fold\n{faces[0]},{faces[1]},1,1\n")
    argv = ["prepare", "--csv", str(csv), "--out", str(tmp_path / "p.pack")]
    assert main([*argv, "--max-pixels", "59999"]) == 2
    error = capsys.readouterr().err
    assert "photo0.png" in error and "300x200" in error and "megapixels" in error
    assert not (tmp_path / "p.pack").exists()
