"""Read dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``) with numpy.

dlib serialises a network as: the loss layer, then the versions of every layer wrapper from the
outermost to the innermost (2 for a layer, 1 for a tag or skip, 3 for the layer on the input),
then the input layer, then each layer's record from the innermost (the 7x7 conv) to the
outermost (the fc). The topology (where tags and skips sit) is not stored, so this module holds
the network definition (from dlib's ``dnn_face_recognition_ex.cpp``) and checks the file against
it, field by field: any mismatch, truncation or trailing byte raises :class:`DlibFormatError`.

Encodings (``dlib/serialize.h``):

- integer: a control byte (low nibble = number of value bytes, bit 7 = negative), then the
  absolute value little-endian;
- float / double: an integer mantissa and an integer exponent, value = mantissa * 2**exponent;
- string: integer length, then the bytes; bool: the character ``'0'`` or ``'1'``;
- tensor: version 2, then n, k, nr, nc, then n*k*nr*nc raw little-endian float32;
  alias tensor (shape only): version 1, then n, k, nr, nc.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xcos.errors import CheckpointNotFoundError, DlibFormatError, DlibWeightsNotFoundError

__all__ = [
    "DLIB_MEANS",
    "EMBEDDING_DIM",
    "INPUT_SIZE",
    "LEVELS",
    "STEM_CHANNELS",
    "DlibResNetWeights",
    "architecture",
    "find_dlib_weights",
    "read_dlib_resnet",
]

#: dlib's levels from the input side: (name, channels, residual blocks, first block halves).
LEVELS: tuple[tuple[str, int, int, bool], ...] = (
    ("level4", 32, 3, False),
    ("level3", 64, 4, True),
    ("level2", 128, 3, True),
    ("level1", 256, 3, True),
    ("level0", 256, 1, True),
)
STEM_CHANNELS = 32
STEM_KERNEL = 7
INPUT_SIZE = 150
EMBEDDING_DIM = 128
#: Per-channel means (R, G, B) the released file stores; used for randomly initialised models.
DLIB_MEANS = (122.782, 117.001, 104.298)

_WEIGHTS_FILE = "dlib_face_recognition_resnet_model_v1.dat"
_LOSS_NAME = "loss_metric_2"
_INPUT_NAME = "input_rgb_image_sized"
# Serialised layer names in the released file (dlib 19.x spells versions into the names).
_NAMES = {
    "con": "con_4",
    "affine": "affine_",
    "relu": "relu_",
    "max_pool": "max_pool_2",
    "avg_pool": "avg_pool_2",
    "add_prev": "add_prev_",
    "fc": "fc_2",
}
_FC_NO_BIAS = 1  # dlib's fc_bias_mode::FC_NO_BIAS
_AFFINE_CONV_MODE = 0  # dlib's layer_mode::CONV_MODE: one gamma/beta per channel
_ALIAS_VERSION = 1
_TENSOR_VERSION = 2


@dataclass(frozen=True)
class Layer:
    """One layer of the definition. ``kind`` is a key of ``_NAMES`` or ``tag`` / ``skip``.

    ``con``: (filters, in_channels, kernel, stride); ``affine``: (channels,);
    pools: (window, stride) with window 0 = the whole map; ``fc``: (outputs, inputs).
    """

    kind: str
    args: tuple[int, ...] = ()


def architecture() -> list[Layer]:
    """dlib's face ResNet as a list of layer wrappers, from the input outwards.

    ``block`` = con(stride) -> affine -> relu -> con(1) -> affine. A residual adds the block's
    input (tag1) to its output (add_prev1); a down-sampling residual adds ``avg_pool 2x2/2`` of
    the input (tag2 marks the block output, skip1 jumps back to tag1) to the block output.
    """
    layers = [
        Layer("con", (STEM_CHANNELS, 3, STEM_KERNEL, 2)),
        Layer("affine", (STEM_CHANNELS,)),
        Layer("relu"),
        Layer("max_pool", (3, 2)),
    ]
    channels = STEM_CHANNELS
    for _, width, blocks, halves in LEVELS:
        for index in range(blocks):
            stride = 2 if halves and index == 0 else 1
            layers += [
                Layer("tag"),
                Layer("con", (width, channels, 3, stride)),
                Layer("affine", (width,)),
                Layer("relu"),
                Layer("con", (width, width, 3, 1)),
                Layer("affine", (width,)),
            ]
            if stride == 2:
                layers += [Layer("tag"), Layer("skip"), Layer("avg_pool", (2, 2))]
            layers += [Layer("add_prev"), Layer("relu")]
            channels = width
    layers += [Layer("avg_pool", (0, 1)), Layer("fc", (EMBEDDING_DIM, channels))]
    return layers


@dataclass
class DlibResNetWeights:
    """Every parameter of the network, in the order of :func:`architecture`, as float32.

    Attributes:
        means: input means (R, G, B) [3], subtracted from 0..255 pixels before dividing by 256.
        conv_weights: [filters, in_channels, k, k] per conv (29), torch's Conv2d layout.
        conv_biases: [filters] per conv.
        affine_scales: [channels] per affine (29): batch norm folded into y = scale * x + shift.
        affine_shifts: [channels] per affine.
        fc_weight: [128, 256], torch's Linear layout (the file stores the transpose); no bias.
        layers: the serialised layer names, from the input outwards (108 records).
    """

    means: np.ndarray
    conv_weights: list[np.ndarray] = field(default_factory=list)
    conv_biases: list[np.ndarray] = field(default_factory=list)
    affine_scales: list[np.ndarray] = field(default_factory=list)
    affine_shifts: list[np.ndarray] = field(default_factory=list)
    fc_weight: np.ndarray | None = None
    layers: list[str] = field(default_factory=list)


class _Reader:
    """A cursor over the file's bytes; every failure names the file and the byte offset."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.data = data
        self.path = path
        self.pos = 0
        self.context = "the header"

    def fail(self, message: str, at: int | None = None) -> DlibFormatError:
        offset = self.pos if at is None else at
        return DlibFormatError(f"{self.path}: {message} at byte {offset} ({self.context})")

    def take(self, count: int, what: str) -> bytes:
        if self.pos + count > len(self.data):
            raise DlibFormatError(
                f"{self.path}: truncated at byte {len(self.data)} while reading {what} "
                f"of {self.context} ({count} bytes needed from byte {self.pos})"
            )
        chunk = self.data[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def integer(self, what: str = "an integer") -> int:
        start = self.pos
        control = self.take(1, what)[0]
        size = control & 0x0F
        if control & 0x70 or size > 8:
            raise self.fail(f"bad integer control byte 0x{control:02x} for {what}", start)
        value = int.from_bytes(self.take(size, what), "little")
        return -value if control & 0x80 else value

    def real(self, what: str = "a float") -> float:
        mantissa = self.integer(what)
        exponent = self.integer(what)
        if exponent >= 32000:  # dlib's encoding of inf / nan
            return math.nan
        return math.ldexp(mantissa, exponent)

    def boolean(self, what: str = "a bool") -> bool:
        start = self.pos
        byte = self.take(1, what)
        if byte not in (b"0", b"1"):
            raise self.fail(f"expected '0' or '1' for {what}, found {byte!r}", start)
        return byte == b"1"

    def string(self, what: str = "a string") -> str:
        start = self.pos
        length = self.integer(what)
        if not 0 <= length <= 256:
            raise self.fail(f"implausible string length {length} for {what}", start)
        return self.take(length, what).decode("latin-1")

    def expect_int(self, expected: int, what: str) -> None:
        start = self.pos
        value = self.integer(what)
        if value != expected:
            raise self.fail(f"expected {what} = {expected}, found {value}", start)

    def expect_string(self, expected: str, what: str) -> None:
        start = self.pos
        value = self.string(what)
        if value != expected:
            raise self.fail(f"expected {what} {expected!r}, found {value!r}", start)

    def shape(self, version: int, what: str) -> tuple[int, int, int, int]:
        self.expect_int(version, f"the version of {what}")
        start = self.pos
        dims = tuple(self.integer(f"the shape of {what}") for _ in range(4))
        if any(d < 0 for d in dims):
            raise self.fail(f"negative dimension in the shape {dims} of {what}", start)
        return dims  # type: ignore[return-value]

    def tensor(self, what: str = "a tensor") -> np.ndarray:
        """A version-2 tensor as a flat float32 array (its 4-d shape checked by the caller)."""
        n, k, nr, nc = self.shape(_TENSOR_VERSION, what)
        count = n * k * nr * nc
        raw = self.take(4 * count, f"the data of {what}")
        return np.frombuffer(raw, dtype="<f4").astype(np.float32)

    def alias(self, expected: tuple[int, int, int, int], what: str) -> None:
        start = self.pos
        dims = self.shape(_ALIAS_VERSION, what)
        if dims != expected:
            raise self.fail(f"expected {what} of shape {expected}, found {dims}", start)


def _params(reader: _Reader, size: int, what: str) -> np.ndarray:
    start = reader.pos
    values = reader.tensor(what)
    if values.size != size:
        raise reader.fail(f"expected {size} values in {what}, found {values.size}", start)
    return values


def _read_con(reader: _Reader, layer: Layer, out: DlibResNetWeights) -> None:
    filters, channels, kernel, stride = layer.args
    weight_size = filters * channels * kernel * kernel
    values = _params(reader, weight_size + filters, "the parameters")
    # dlib pads kernel // 2 only for stride 1; stride-2 layers are unpadded.
    padding = kernel // 2 if stride == 1 else 0
    for value, what in (
        (filters, "the filter count"),
        (kernel, "the kernel rows"),
        (kernel, "the kernel columns"),
        (stride, "the row stride"),
        (stride, "the column stride"),
        (padding, "the row padding"),
        (padding, "the column padding"),
    ):
        reader.expect_int(value, what)
    reader.alias((filters, channels, kernel, kernel), "the filter alias")
    reader.alias((1, filters, 1, 1), "the bias alias")
    for _ in range(4):  # learning-rate and weight-decay multipliers
        reader.real("a multiplier")
    out.conv_weights.append(values[:weight_size].reshape(filters, channels, kernel, kernel))
    out.conv_biases.append(values[weight_size:].copy())


def _read_affine(reader: _Reader, layer: Layer, out: DlibResNetWeights) -> None:
    (channels,) = layer.args
    values = _params(reader, 2 * channels, "the parameters")
    reader.alias((1, channels, 1, 1), "the gamma alias")
    reader.alias((1, channels, 1, 1), "the beta alias")
    reader.expect_int(_AFFINE_CONV_MODE, "the affine mode")
    out.affine_scales.append(values[:channels].copy())
    out.affine_shifts.append(values[channels:].copy())


def _read_pool(reader: _Reader, layer: Layer, out: DlibResNetWeights) -> None:
    window, stride = layer.args
    for value, what in (
        (window, "the window rows"),
        (window, "the window columns"),
        (stride, "the row stride"),
        (stride, "the column stride"),
        (0, "the row padding"),
        (0, "the column padding"),
    ):
        reader.expect_int(value, what)


def _read_fc(reader: _Reader, layer: Layer, out: DlibResNetWeights) -> None:
    outputs, inputs = layer.args
    reader.expect_int(outputs, "the output count")
    reader.expect_int(inputs, "the input count")
    values = _params(reader, inputs * outputs, "the parameters")
    reader.alias((inputs, outputs, 1, 1), "the weight alias")
    reader.alias((0, 0, 0, 0), "the bias alias")
    reader.expect_int(_FC_NO_BIAS, "the bias mode")
    for _ in range(4):
        reader.real("a multiplier")
    # Stored inputs x outputs: the transpose of torch's Linear weight.
    out.fc_weight = values.reshape(inputs, outputs).T.copy()


def _read_nothing(reader: _Reader, layer: Layer, out: DlibResNetWeights) -> None:
    """relu_ and add_prev_ store only their name."""


_READERS = {
    "con": _read_con,
    "affine": _read_affine,
    "relu": _read_nothing,
    "max_pool": _read_pool,
    "avg_pool": _read_pool,
    "add_prev": _read_nothing,
    "fc": _read_fc,
}


def _read_versions(reader: _Reader, wrappers: list[Layer]) -> None:
    """The wrapper versions, outermost first: 2 per layer, 1 per tag / skip, 3 innermost."""
    for index, layer in enumerate(reversed(wrappers)):
        innermost = index == len(wrappers) - 1
        expected = 3 if innermost else 1 if layer.kind in ("tag", "skip") else 2
        reader.context = f"wrapper {index} (outermost first), a {layer.kind} layer"
        reader.expect_int(expected, "the wrapper version")


def _read_input(reader: _Reader) -> np.ndarray:
    reader.context = "the input layer"
    reader.expect_string(_INPUT_NAME, "input layer")
    means = np.array([reader.real("a channel mean") for _ in range(3)], dtype=np.float32)
    reader.expect_int(INPUT_SIZE, "the input rows")
    reader.expect_int(INPUT_SIZE, "the input columns")
    return means


def _read_record(reader: _Reader, layer: Layer, out: DlibResNetWeights) -> None:
    """One layer's data, then the wrapper's 3 bools and 3 (normally empty) work tensors."""
    reader.expect_string(_NAMES[layer.kind], "layer")
    _READERS[layer.kind](reader, layer, out)
    out.layers.append(_NAMES[layer.kind])
    for _ in range(3):
        reader.boolean("a wrapper flag")
    for _ in range(3):
        reader.tensor("a work tensor")


def read_dlib_resnet(path: str | Path) -> DlibResNetWeights:
    """Parse ``dlib_face_recognition_resnet_model_v1.dat`` (about 30 ms, numpy only).

    Raises:
        DlibFormatError: the file differs from the definition in :func:`architecture`
            (truncated, trailing bytes, unexpected layer, shape, stride or padding).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"dlib weights {str(path)!r} does not exist (no such file)")
    reader = _Reader(path.read_bytes(), path)
    reader.expect_int(1, "the loss wrapper version")
    reader.expect_string(_LOSS_NAME, "loss layer")
    reader.real("the margin")
    reader.real("the distance threshold")

    wrappers = architecture()
    _read_versions(reader, wrappers)
    out = DlibResNetWeights(means=_read_input(reader))
    layers = [layer for layer in wrappers if layer.kind not in ("tag", "skip")]
    counts: dict[str, int] = {}
    for record, layer in enumerate(layers):
        counts[layer.kind] = counts.get(layer.kind, 0) + 1
        reader.context = f"record {record}, layer {layer.kind} #{counts[layer.kind]}"
        _read_record(reader, layer, out)
        if record == 0:  # the innermost wrapper also stores its sample expansion factor
            reader.expect_int(1, "the sample expansion factor")
    if reader.pos != len(reader.data):
        reader.context = "after the last layer"
        raise reader.fail(f"trailing data: {len(reader.data) - reader.pos} extra bytes")
    return out


def find_dlib_weights() -> Path:
    """The .dat shipped by the installed ``face-recognition-models`` package.

    Located without importing the package (its ``__init__`` needs ``pkg_resources``).

    Raises:
        DlibWeightsNotFoundError: the package or the file is missing.
    """
    hint = 'install it with `pip install -e ".[dlib]"` (or `pip install face-recognition-models`)'
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise DlibWeightsNotFoundError(
            f"dlib's face-recognition weights need the face-recognition-models package; {hint}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / _WEIGHTS_FILE
    if not path.is_file():
        raise DlibWeightsNotFoundError(f"{path} is missing; reinstall the package: {hint}")
    return path
