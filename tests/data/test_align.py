"""Face detection and 5-point alignment (xcos.data.align), on synthetic and real LFW images."""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import math
import os
import re
import shlex
import typing

import cv2
import numpy as np
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from PIL import Image

from tests.conftest import REPO, require_module, require_shared
from xcos.config_types import check_value
from xcos.data.align import (
    ARCFACE_TEMPLATE,
    FaceAligner,
    MTCNNDetector,
    arcface_template,
    load_bounded_rgb,
    similarity_transform,
    warp_affine,
)
from xcos.data.images import read_rgb
from xcos.errors import BadImageError, DataError


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return np.asarray(points, dtype=np.float64) @ matrix[:, :2].T + matrix[:, 2]


def eye_error(result) -> float:
    """Largest distance (px) of the two transformed eye landmarks from the template's eyes."""
    eyes = apply(result.matrix, result.landmarks[:2])
    template = arcface_template(result.face.shape[0])[:2]
    return float(np.linalg.norm(eyes - template, axis=1).max())


@pytest.fixture(scope="module")
def aligner() -> FaceAligner:
    return FaceAligner()


def lfw_images(count: int) -> list:
    """``count`` LFW images spread over the alphabet (first image of every k-th person)."""
    root = require_shared("data/lfw/images")
    people = sorted(p for p in root.iterdir() if p.is_dir())
    step = max(1, len(people) // count)
    return [sorted(person.glob("*.jpg"))[0] for person in people[::step][:count]]


@pytest.fixture(scope="module")
def lfw_face():
    return lfw_images(1)[0]


# --------------------------------------------------------------------------------------------
# Similarity transform and warp
# --------------------------------------------------------------------------------------------


def test_template_maps_onto_itself():
    matrix = similarity_transform(ARCFACE_TEMPLATE, ARCFACE_TEMPLATE)
    np.testing.assert_allclose(matrix, [[1, 0, 0], [0, 1, 0]], atol=1e-9)


def test_template_scales_uniformly_with_image_size():
    matrix = similarity_transform(ARCFACE_TEMPLATE, arcface_template(224))
    np.testing.assert_allclose(matrix, [[2, 0, 0], [0, 2, 0]], atol=1e-9)
    ratio = arcface_template(160) / ARCFACE_TEMPLATE
    np.testing.assert_allclose(ratio, 160 / 112)  # one factor on x and y: no stretch


def test_recovers_a_known_rotation_scale_translation():
    angle, scale, shift = math.radians(23.0), 1.7, np.array([12.5, -7.25])
    linear = scale * np.array(
        [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
    )
    src = np.random.default_rng(0).uniform(0, 200, size=(5, 2))
    dst = src @ linear.T + shift
    matrix = similarity_transform(src, dst)
    np.testing.assert_allclose(matrix[:, :2], linear, atol=1e-9)
    np.testing.assert_allclose(matrix[:, 2], shift, atol=1e-7)


@pytest.mark.parametrize("distortion", ["shear", "stretch", "mirror", "noise"])
def test_never_shears_stretches_or_mirrors(distortion):
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 100, size=(5, 2))
    linear = {
        "shear": [[1.0, 0.6], [0.0, 1.0]],
        "stretch": [[2.0, 0.0], [0.0, 0.7]],
        "mirror": [[-1.0, 0.0], [0.0, 1.0]],
        "noise": [[0.9, 0.1], [-0.2, 1.1]],
    }[distortion]
    dst = src @ np.array(linear).T + rng.normal(0, 2, size=(5, 2))
    a = similarity_transform(src, dst)[:, :2]
    assert a[0, 0] == pytest.approx(a[1, 1]) and a[0, 1] == pytest.approx(-a[1, 0])
    assert np.linalg.det(a) > 0  # a rotation times a positive scale, never a reflection


@pytest.mark.parametrize("scale", [1.0, 0.05])
def test_warp_puts_a_source_point_where_the_matrix_says(scale):
    """Also through the area pre-shrink used for large reductions (scale 0.05)."""
    side = round(40 / scale)
    image = np.zeros((side + 400, side + 400, 3), np.uint8)
    centre = np.array([200 + side / 2 - 0.5, 150 + side / 2 - 0.5])  # pixel-index coordinates
    image[150 : 150 + side, 200 : 200 + side] = 255  # a square, 40 px once warped
    target = np.array([50.0, 60.0])
    matrix = np.array([[scale, 0, 0], [0, scale, 0]], dtype=np.float64)
    matrix[:, 2] = target - scale * centre
    out = warp_affine(image, matrix, 112)[..., 0].astype(np.float64)
    ys, xs = np.mgrid[:112, :112]
    centroid = np.array([(xs * out).sum(), (ys * out).sum()]) / out.sum()
    np.testing.assert_allclose(centroid, target, atol=0.25)
    assert out.sum() / 255 == pytest.approx(40 * 40, rel=0.03)


def test_warp_does_not_alias_when_shrinking_a_lot():
    stripes = np.zeros((1000, 1000, 3), np.uint8)
    stripes[:, ::2] = 255  # 1-px stripes: any sampling without averaging aliases
    matrix = np.array([[0.1, 0, -5], [0, 0.1, -5]])  # output sees source 50..950
    out = warp_affine(stripes, matrix, 90)
    assert abs(out.mean() - 127.5) < 3 and out.std() < 3


# --------------------------------------------------------------------------------------------
# Dependencies: MTCNN weights from the facenet-pytorch wheel, and no downgrade of our stack
# --------------------------------------------------------------------------------------------


def test_detector_runs_facenet_pytorch_networks_with_their_shipped_weights():
    detector = MTCNNDetector()
    for net in (detector.pnet, detector.rnet, detector.onet):
        assert type(net).__module__.startswith("facenet_pytorch")
        assert not net.training
    flat = np.full((1, 120, 120, 3), 128, dtype=np.uint8)
    assert len(detector.detect(flat)[0]) == 0  # no face in a flat image, and no crash


def _makefile_recipe_lines(text: str) -> list[str]:
    return text.replace("\\\n", " ").splitlines()


def facenet_install_problems(makefile: str) -> list[str]:
    """What is wrong with how ``makefile`` installs facenet-pytorch (empty when all is right)."""
    lines = [
        line.strip()
        for line in _makefile_recipe_lines(makefile)
        if "facenet" in line.lower() and re.search(r"\bpip\b.*\binstall\b", line)
    ]
    if not lines:
        return ["facenet-pytorch is not installed by the Makefile (MTCNN weights come from it)"]
    return [
        f"installs facenet-pytorch with its dependencies: {line}"
        for line in lines
        if "--no-deps" not in shlex.split(line)
    ]


def test_the_install_check_can_fail():
    bad = '\t$(PY) -m pip install --quiet "facenet-pytorch>=2.5"\n'
    assert facenet_install_problems(bad)
    assert facenet_install_problems("\t$(PY) -m pip install -e .\n")
    assert not facenet_install_problems('\t$(PY) -m pip install --no-deps "facenet-pytorch>=2.5"')


def _pyproject() -> dict:
    tomllib = require_module("tomllib")
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_facenet_pytorch_is_installed_only_without_its_dependencies():
    """facenet-pytorch 2.6 pins torch<2.3, torchvision<0.18, numpy<2, Pillow<10.3: installing
    it with its dependencies downgrades our whole stack. So: the Makefile installs it with
    ``--no-deps``, and it must never be a (pip-resolved) dependency of the project itself."""
    assert facenet_install_problems((REPO / "Makefile").read_text()) == []
    project = _pyproject()["project"]
    requirements = list(project.get("dependencies", []))
    for group in project.get("optional-dependencies", {}).values():
        requirements += group
    names = {canonicalize_name(Requirement(r).name) for r in requirements}
    assert "facenet-pytorch" not in names, "pip would resolve facenet-pytorch's pins"


def _torch_pins() -> dict[str, Version]:
    """torch/torchvision ``==`` pins of the Makefile's TORCH_PACKAGES (or its env override)."""
    packages = os.environ.get("TORCH_PACKAGES")
    if packages is None:
        match = re.search(r"^TORCH_PACKAGES\s*\?=(.*)$", (REPO / "Makefile").read_text(), re.M)
        packages = match.group(1) if match else ""
    pins = {}
    for word in packages.split():
        requirement = Requirement(word)
        exact = [s.version for s in requirement.specifier if s.operator == "=="]
        if exact:
            pins[canonicalize_name(requirement.name)] = Version(exact[0])
    return pins


def test_installed_stack_was_not_downgraded_by_facenet_pins():
    """Runtime guard, checked on the environment the tests run in.

    1. torch and torchvision are exactly the versions the Makefile pins (TORCH_PACKAGES). A
       with-dependencies install of facenet-pytorch cannot keep them: its pins (read from its
       own metadata here) exclude them, so pip would replace them, and numpy/Pillow with them.
       This fails as soon as anything after the torch install downgraded torch.
    2. torch, numpy and pillow satisfy the lower bounds of our pyproject.
    3. Wherever facenet-pytorch caps torch/torchvision below the pinned version, the installed
       version is outside its range (i.e. facenet's pins were not applied).
    """
    facenet = {}
    for line in importlib.metadata.requires("facenet-pytorch") or []:
        requirement = Requirement(line)
        facenet[canonicalize_name(requirement.name)] = requirement.specifier
    installed = {
        name: Version(importlib.metadata.version(name))
        for name in ("torch", "torchvision", "numpy", "pillow")
    }
    pins = _torch_pins()
    for name, pinned in pins.items():
        assert Version(installed[name].public) == pinned, (
            f"{name} {installed[name]} is installed, the Makefile pins {pinned}: "
            "something downgraded it (facenet-pytorch installed with its dependencies?)"
        )
        if name in facenet and not facenet[name].contains(pinned, prereleases=True):
            assert not facenet[name].contains(installed[name], prereleases=True)
    lower_bounds = {}
    for line in _pyproject()["project"]["dependencies"]:
        requirement = Requirement(line)
        for spec in requirement.specifier:
            if spec.operator == ">=":
                lower_bounds[canonicalize_name(requirement.name)] = Version(spec.version)
    for name in ("torch", "numpy", "pillow"):
        assert installed[name] >= lower_bounds[name], f"{name} {installed[name]} is too old"


# --------------------------------------------------------------------------------------------
# The aligner: configuration
# --------------------------------------------------------------------------------------------


def test_constructor_is_config_friendly(aligner):
    hints = typing.get_type_hints(FaceAligner.__init__)
    for name, parameter in inspect.signature(FaceAligner).parameters.items():
        assert name in hints, f"{name} has no annotation"
        default = json.loads(json.dumps(parameter.default))  # JSON round trip
        check_value(default, hints[name], name)
    settings = json.loads(json.dumps(aligner.settings()))
    assert settings["image_size"] == 112 and len(settings["template"]) == 5
    with pytest.raises(ValueError, match="select"):
        FaceAligner(select="biggest")


# --------------------------------------------------------------------------------------------
# Real faces (LFW)
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_aligns_real_lfw_faces_onto_the_template():
    paths = lfw_images(20)
    aligner = FaceAligner(select="central")
    results = aligner.align_batch(paths)
    assert aligner.stats.as_dict() == {
        "images": 20,
        "faces": 20,
        "fallbacks": 0,
        "no_face_errors": 0,
    }
    errors = np.array([eye_error(r) for r in results])
    assert np.median(errors) < 3.0 and errors.max() < 10.0, errors
    for result, path in zip(results, paths, strict=True):
        assert result.face.shape == (112, 112, 3) and result.face.dtype == np.uint8
        assert result.name == str(path) and not result.fallback and result.score > 0.9
        x1, y1, x2, y2 = result.box
        assert 0 <= x1 < x2 <= 250 and 0 <= y1 < y2 <= 250
        assert np.all((result.landmarks[:, 0] > x1) & (result.landmarks[:, 0] < x2))
    # Independent check of the warped pixels: detect again on the aligned faces. They are
    # padded first, since MTCNN's later stages crop boxes clipped at the image border.
    pad = 48
    padded = [
        np.pad(r.face, ((pad, pad), (pad, pad), (0, 0)), constant_values=128) for r in results
    ]
    again = []
    for found in aligner.detector.detect(np.stack(padded)):
        assert len(found), "no face found in an aligned face"
        centres = (found.boxes[:, :2] + found.boxes[:, 2:]) / 2 - pad
        best = np.argmin(np.linalg.norm(centres - 56, axis=1))
        eyes = found.landmarks[best, :2] - pad
        again.append(np.linalg.norm(eyes - ARCFACE_TEMPLATE[:2], axis=1).max())
    assert np.median(again) < 3.5 and max(again) < 10.0, again


@pytest.mark.slow
def test_batched_detection_matches_one_by_one(aligner):
    paths = lfw_images(3)
    small = np.asarray(Image.open(paths[0]).resize((180, 180), Image.BILINEAR))
    images = [*paths, small]  # two detection sizes in one batch
    batched = aligner.align_batch(images)
    for image, result in zip(images, batched, strict=True):
        single = aligner.align(image)
        np.testing.assert_allclose(result.landmarks, single.landmarks, atol=1e-3)
        assert np.abs(result.face.astype(int) - single.face.astype(int)).max() <= 1


@pytest.mark.slow
def test_largest_or_most_central_face():
    big, small = lfw_images(2)
    canvas = Image.new("RGB", (1200, 1200), (128, 128, 128))
    canvas.paste(Image.open(big).convert("RGB").resize((480, 480), Image.BILINEAR), (0, 0))
    canvas.paste(Image.open(small).convert("RGB"), (475, 475))
    image = np.asarray(canvas)
    largest = FaceAligner(select="largest").align(image)
    central = FaceAligner(select="central").align(image)
    assert largest.landmarks.max() < 480  # the big face, top left
    assert np.all(np.abs(central.landmarks - 600) < 100)  # the small one, in the middle


@pytest.mark.slow
def test_colour_order_survives_alignment(aligner, lfw_face):
    rgb = read_rgb(lfw_face)
    first = aligner.align(rgb)
    # paint red the source region that lands in the aligned face's top-left corner
    corner = np.array([[-10, -10], [24, -10], [24, 24], [-10, 24]], dtype=np.float64)
    polygon = apply(cv2.invertAffineTransform(first.matrix), corner)
    painted = rgb.copy()
    cv2.fillConvexPoly(painted, np.round(polygon).astype(np.int32), (255, 0, 0))
    face = aligner.align(painted).face
    patch = face[4:14, 4:14].reshape(-1, 3)
    assert np.all(patch[:, 0] >= 250) and np.all(patch[:, 1:] <= 5)


# --------------------------------------------------------------------------------------------
# No face, tiny, huge and broken images
# --------------------------------------------------------------------------------------------


@pytest.fixture
def grey_png(tmp_path):
    path = tmp_path / "flat_grey.png"
    Image.new("RGB", (250, 250), (128, 128, 128)).save(path)
    return path


def test_no_face_raises_an_error_naming_the_image(grey_png):
    aligner = FaceAligner(no_face="error")
    with pytest.raises(DataError, match=re.escape(str(grey_png))):
        aligner.align(grey_png)
    assert aligner.stats.no_face_errors == 1 and aligner.stats.faces == 0


@pytest.mark.slow
def test_center_crop_fallback_is_flagged_and_counted(grey_png, lfw_face):
    aligner = FaceAligner(no_face="center_crop")
    results = aligner.align_batch([grey_png, lfw_face, grey_png])
    assert [r.fallback for r in results] == [True, False, True]
    assert aligner.stats.as_dict() == {
        "images": 3,
        "faces": 1,
        "fallbacks": 2,
        "no_face_errors": 0,
    }
    fallback = results[0]
    assert fallback.face.shape == (112, 112, 3) and fallback.landmarks is None
    side = 0.53 * 250
    np.testing.assert_allclose(fallback.box, [125 - side / 2] * 2 + [125 + side / 2] * 2)
    np.testing.assert_allclose(
        apply(fallback.matrix, fallback.box.reshape(2, 2) - 0.5), [[-0.5] * 2, [111.5] * 2]
    )


def test_pure_red_stays_in_channel_zero(tmp_path):
    path = tmp_path / "red.png"
    Image.new("RGB", (200, 200), (255, 0, 0)).save(path)
    face = FaceAligner(no_face="center_crop").align(path).face
    assert np.all(face[..., 0] == 255) and np.all(face[..., 1:] == 0)


def test_tiny_images_fail_naming_the_image(aligner, tmp_path):
    path = tmp_path / "tiny.png"
    Image.new("RGB", (15, 40), (200, 150, 100)).save(path)
    with pytest.raises(DataError, match=r"tiny\.png.*15x40"):
        aligner.align(path)
    with pytest.raises(DataError, match=r"image #1 \(ndarray\).*19x19"):
        aligner.align_batch([np.zeros((30, 30, 3), np.uint8), np.zeros((19, 19, 3), np.uint8)])


def test_truncated_jpeg_fails_naming_the_file(aligner, lfw_face, tmp_path):
    path = tmp_path / "truncated.jpg"
    data = lfw_face.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImageError, match=re.escape(str(path))):
        aligner.align(path)
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image")
    with pytest.raises(BadImageError, match="garbage"):
        aligner.align(garbage)


def test_wrong_array_types_fail_clearly(aligner):
    with pytest.raises(DataError, match="uint8"):
        aligner.align(np.zeros((50, 50, 3), np.float32))
    with pytest.raises(DataError, match="shape"):
        aligner.align(np.zeros((50, 50, 2), np.uint8))


@pytest.mark.slow
def test_huge_jpeg_is_reduced_while_decoding(tmp_path, lfw_face):
    """6000 x 4000 (24 MP > 20 MP): decoded at 1/2 scale by the JPEG decoder (3000 x 2000, never
    the full 24 MP), detected on a <= 640 px copy; landmarks reported at full resolution."""
    reference = FaceAligner().align(lfw_face)
    canvas = Image.new("RGB", (6000, 4000), (120, 120, 120))
    canvas.paste(
        Image.open(lfw_face).convert("RGB").resize((1000, 1000), Image.BICUBIC), (2500, 1500)
    )
    path = tmp_path / "huge.jpg"
    canvas.save(path, quality=90)
    del canvas
    aligner = FaceAligner()
    loaded = aligner.load(path)
    assert loaded.rgb.shape == (2000, 3000, 3) and loaded.source_size == (6000, 4000)
    detection_copy, _ = aligner.detection_input(loaded.rgb)
    assert max(detection_copy.shape[:2]) == 640
    result = aligner.align(path)
    expected = (reference.landmarks + 0.5) * 4 - 0.5 + (2500, 1500)
    assert np.abs(result.landmarks - expected).max() < 20  # 5 px of the 250 px original
    assert eye_error(result) < 6


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_images_over_max_pixels_are_reduced(tmp_path, lfw_face, suffix):
    """PNG: resized after decoding; JPEG: reduced by the decoder (250 -> 125)."""
    path = tmp_path / f"face{suffix}"
    Image.open(lfw_face).save(path)
    reference = FaceAligner().align(path)
    aligner = FaceAligner(max_pixels=130 * 130)
    loaded = aligner.load(path)
    assert loaded.rgb.shape[0] * loaded.rgb.shape[1] <= 130 * 130
    if suffix == ".jpg":
        assert loaded.rgb.shape == (125, 125, 3)
    result = aligner.align(path)
    assert np.abs(result.landmarks - reference.landmarks).max() < 6
    assert eye_error(result) < 6


# --------------------------------------------------------------------------------------------
# Input kinds: everything becomes RGB
# --------------------------------------------------------------------------------------------


def _save_variant(image: Image.Image, kind: str, folder) -> object:
    if kind == "gray-png":
        image.convert("L").save(folder / "gray.png")
        return folder / "gray.png"
    if kind == "rgba-png":
        rgba = image.convert("RGBA")
        rgba.putalpha(200)
        rgba.save(folder / "rgba.png")
        return folder / "rgba.png"
    if kind == "palette-png":
        image.convert("P", palette=Image.ADAPTIVE, colors=256).save(folder / "palette.png")
        return folder / "palette.png"
    if kind == "cmyk-jpeg":
        image.convert("CMYK").save(folder / "cmyk.jpg", quality=95)
        return folder / "cmyk.jpg"
    if kind == "exif-rotated-jpeg":
        stored = image.transpose(Image.Transpose.ROTATE_90)  # stored sideways ...
        exif = Image.Exif()
        exif[0x0112] = 6  # ... displayed after a 90 degree clockwise turn
        stored.save(folder / "rotated.jpg", quality=95, exif=exif.tobytes())
        return folder / "rotated.jpg"
    if kind == "gray-array":
        return np.asarray(image.convert("L"))
    if kind == "rgba-array":
        return np.asarray(image.convert("RGBA"))
    if kind == "pil-image":
        return image.copy()
    raise AssertionError(kind)


KINDS = [
    "gray-png",
    "rgba-png",
    "palette-png",
    "cmyk-jpeg",
    "exif-rotated-jpeg",
    "gray-array",
    "rgba-array",
    "pil-image",
]


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_input_kinds_become_rgb(aligner, lfw_face, tmp_path, kind):
    original = Image.open(lfw_face).convert("RGB")
    reference = aligner.align(np.asarray(original))
    source = _save_variant(original, kind, tmp_path)
    loaded = load_bounded_rgb(source)
    assert loaded.rgb.shape == (250, 250, 3) and loaded.rgb.dtype == np.uint8
    difference = np.abs(loaded.rgb.astype(int) - np.asarray(original, dtype=int)).mean()
    if kind.startswith("gray"):
        assert np.array_equal(loaded.rgb[..., 0], loaded.rgb[..., 2])
    else:
        assert difference < 8, difference  # same picture, same orientation, same colours
    result = aligner.align(source)
    assert not result.fallback and result.face.shape == (112, 112, 3)
    assert np.abs(result.landmarks - reference.landmarks).max() < 4
