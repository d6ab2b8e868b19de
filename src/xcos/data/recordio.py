"""InsightFace RecordIO training sets (``train.rec``, ``train.idx``, ``property``), read with numpy.

MS1MV2 (``faces_emore``), MS1MV3, Glint360K, WebFace and CASIA-WebFace are distributed in
MXNet's RecordIO format; MXNet itself is retired and does not install beside current torch and
numpy, so this module reads the files directly. The format (dmlc-core ``recordio.h``, MXNet
``recordio.py``):

- A record is uint32 ``MAGIC`` (little-endian), uint32 ``lrec``, ``lrec & (2**29 - 1)`` bytes of
  data, zero padding to a multiple of 4. Where the writer met the magic at a 4-byte-aligned
  position inside the data, it split the record there and dropped that magic: the parts carry
  ``cflag = lrec >> 29`` 1 (first), 2 (middle), 3 (last); a whole record has cflag 0. The
  reader joins the parts with the magic put back between them.
- A record's data starts with the header ``IfQQ`` (flag, label, id, id2: 24 bytes). With
  ``flag > 0``, ``flag`` float32 labels follow and the scalar label is unused. Then the image
  bytes (JPEG in InsightFace's sets).
- ``train.idx`` is text, ``key<TAB>offset`` per line, the offset of the record's first part.
- InsightFace's layout: when record 0 has labels ``[a, b]`` (and no image bytes), keys
  ``1 .. a-1`` are images and keys ``a .. b-1`` are one record per identity whose labels are
  ``[start, end)`` of that identity's image keys. Otherwise (DALI-style sets, usually
  shuffled) every key is an image.
  An image's class is its label (``label[0]`` for a label vector); ``property`` reads
  ``classes,H,W``.

The file is memory-mapped per process (a pickled ``RecordFile`` carries no mapping), so
DataLoader workers, forked or spawned, and torchrun's processes each read it without sharing
a file position. Opening checks every image's record head and label at once, vectorised
(0.4-0.5 s per million images with the file in the page cache, measured on a synthetic set;
a cold disk adds reading the first page of every record), so a truncated or corrupt file
fails with a ``DataError`` naming the file, the key and the byte offset before training
starts, never with a wrong image later.
"""

from __future__ import annotations

import mmap
import re
import struct
import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from xcos.errors import BadImageError, DataError

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
LENGTH_BITS = 29
LENGTH_MASK = (1 << LENGTH_BITS) - 1
HEADER = struct.Struct("<IfQQ")  # flag, label, id, id2
FILES = ("train.rec", "train.idx")
PROPERTY = "property"
CHUNK = 1 << 20  # image heads checked per vectorised step: bounded temporaries
# OpenCV >= 4.11 decodes straight to RGB; EXIF orientation is ignored, as torchvision's
# decode_jpeg (the device path) ignores it: both must give the same pixels
_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)
_FLAGS = (cv2.IMREAD_COLOR if _RGB is None else _RGB) | cv2.IMREAD_IGNORE_ORIENTATION


def is_record_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds an InsightFace RecordIO training set (``train.rec``)."""
    return (Path(folder) / FILES[0]).is_file()


def split_record(record: bytes, where: str) -> tuple[np.ndarray, bytes]:
    """(labels float32 [max(flag, 1)], payload) of a joined record's data; errors name ``where``."""
    if len(record) < HEADER.size:
        raise DataError(
            f"{where}: the record holds {len(record)} bytes, less than its {HEADER.size}-byte "
            "header (flag, label, id, id2)"
        )
    flag, label, _, _ = HEADER.unpack_from(record)
    if flag == 0:
        return np.array([label], dtype=np.float32), record[HEADER.size :]
    end = HEADER.size + 4 * flag
    if len(record) < end:
        raise DataError(
            f"{where}: the header announces {flag} labels ({4 * flag} bytes), but only "
            f"{len(record) - HEADER.size} bytes follow it"
        )
    labels = np.frombuffer(record, dtype="<f4", count=flag, offset=HEADER.size).astype(np.float32)
    return labels, record[end:]


def class_of(value: float, where: str) -> int:
    """A label as a class number: a non-negative integer stored as float32."""
    if not (np.isfinite(value) and value >= 0 and value == int(value) and value < 2**31):
        raise DataError(f"{where}: label {value!r} is not a class number (an integer >= 0)")
    return int(value)


def decode_rgb(data: bytes, where: str) -> np.ndarray:
    """Encoded image bytes (JPEG, PNG, ...) -> RGB uint8 [H, W, 3]. OpenCV's libjpeg-turbo:
    about twice PIL's rate on 112x112 faces (``bench/rec_data_path.py``). An undecodable
    image raises ``BadImageError`` naming ``where``."""
    if not data:
        raise BadImageError(f"{where}: the record holds no image bytes")
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), _FLAGS)
    if image is None:
        raise BadImageError(f"{where}: cannot decode its image (not a complete JPEG or PNG)")
    return image if _RGB is not None else np.ascontiguousarray(image[:, :, ::-1])


def decoder_reason(err: Exception) -> str:
    """torchvision's message without the C++ source location it starts with."""
    return re.sub(r"^.*\.cpp:\d+, ", "", str(err).strip()) or type(err).__name__


class RecordFile:
    """Random access to the images of an InsightFace RecordIO folder.

    Attributes:
        keys: int64 [N] the image keys, ascending.
        labels: int64 [N] the class of each image of ``keys``.
        num_classes: classes of the set (``property``'s count, checked against the labels).
        image_shape: (H, W) from ``property``, or None without one.

    Raises:
        DataError: a missing file, a malformed ``train.idx`` or ``property``, a record with a
            bad magic, an offset past the end, a record cut short, inconsistent identity
            records, a label that is not a class, or a ``property`` that disagrees with the
            labels; the message names the file, the key and the byte offset.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.rec_path, self.idx_path = (self.folder / name for name in FILES)
        for path in (self.rec_path, self.idx_path):
            if not path.is_file():
                raise DataError(
                    f"{path}: missing; an InsightFace RecordIO folder holds train.rec, "
                    "train.idx and property (as downloaded, e.g. faces_emore/)"
                )
        self.size = self.rec_path.stat().st_size
        if self.size == 0:
            raise DataError(f"{self.rec_path}: empty file")
        self._map: mmap.mmap | None = None
        self._words: np.ndarray | None = None
        self.index_keys, self.index_offsets = self._read_index()
        self.keys, ranges = self._layout()
        if not len(self.keys):
            raise DataError(f"{self.rec_path}: holds no image records")
        self.labels = self._image_labels(self.keys)
        if ranges is not None:
            self._check_identities(*ranges)
        self.num_classes, self.image_shape = self._read_property()

    # ------------------------------------------------------------------ public access

    def __len__(self) -> int:
        return len(self.keys)

    def offset(self, key: int) -> int:
        """Byte offset of record ``key`` (its first part) in ``train.rec``."""
        position = int(np.searchsorted(self.index_keys, key))
        if position == len(self.index_keys) or self.index_keys[position] != key:
            raise DataError(f"{self.idx_path}: no record with key {key}")
        return int(self.index_offsets[position])

    def record(self, key: int) -> bytes:
        """The data of record ``key``, split parts joined (header + labels + image bytes)."""
        return self._read(key, self.offset(key))

    def payload(self, key: int) -> bytes:
        """The image bytes of record ``key``: its data after the header and labels."""
        return split_record(self.record(key), self.where(key))[1]

    def label(self, key: int) -> int:
        """The class of image ``key``."""
        position = int(np.searchsorted(self.keys, key))
        if position == len(self.keys) or self.keys[position] != key:
            raise DataError(f"{self.rec_path}: key {key} is not an image record")
        return int(self.labels[position])

    def image(self, key: int) -> np.ndarray:
        """Image ``key`` decoded, RGB uint8 [H, W, 3]."""
        return decode_rgb(self.payload(key), self.where(key))

    def keys_by_class(self) -> np.ndarray:
        """The image keys grouped by class (classes ascending, keys ascending within one):
        the order ``rec_pairs`` numbers images in and ``xcos pack`` stores them in."""
        return self.keys[np.argsort(self.labels, kind="stable")]

    def where(self, key: int) -> str:
        """``<train.rec>: key K (record at byte O)``, for messages."""
        return f"{self.rec_path}: key {key} (record at byte {self.offset(key)})"

    # ------------------------------------------------------------------ mapping

    def _mapped(self) -> mmap.mmap:
        if self._map is None:
            with self.rec_path.open("rb") as handle:
                self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            if len(self._map) != self.size:
                raise DataError(f"{self.rec_path}: changed size while being opened")
        return self._map

    def _word_array(self) -> np.ndarray:
        """The file as little-endian uint32 words (records start 4-byte aligned)."""
        if self._words is None:
            self._words = np.frombuffer(self._mapped(), dtype="<u4", count=self.size // 4)
        return self._words

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_map"] = state["_words"] = None  # each process maps the file itself
        return state

    # ------------------------------------------------------------------ records

    def _read(self, key: int, offset: int) -> bytes:
        """Record ``key`` at ``offset``: its parts checked and joined with the magic."""
        mapped, parts, position = self._mapped(), [], offset
        while True:
            where = f"{self.rec_path}: key {key} (record at byte {offset}"
            where += f", part at byte {position})" if position != offset else ")"
            if position + 8 > self.size:
                raise DataError(
                    f"{where}: the file ends at byte {self.size}, inside the record's head "
                    "(train.rec is truncated)"
                )
            magic, lrec = struct.unpack_from("<II", mapped, position)
            if magic != MAGIC:
                raise DataError(
                    f"{where}: magic 0x{magic:08x}, expected 0x{MAGIC:08x}: not the start of a "
                    "record (a corrupt train.rec, or a train.idx of another file)"
                )
            cflag, length = lrec >> LENGTH_BITS, lrec & LENGTH_MASK
            if cflag > 3 or (cflag in (0, 1)) != (not parts):
                raise DataError(f"{where}: {_part_error(cflag, bool(parts))}")
            end = position + 8 + length
            if end > self.size:
                raise DataError(
                    f"{where}: the record needs {length} bytes up to byte {end}, the file ends "
                    f"at byte {self.size} (train.rec is truncated)"
                )
            parts.append(mapped[position + 8 : end])
            if cflag in (0, 3):
                return MAGIC_BYTES.join(parts)
            position += 8 + (length + 3) // 4 * 4

    def _read_index(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys, offsets) of ``train.idx``, sorted by key; offsets checked against the file."""
        try:
            text = self.idx_path.read_text(encoding="ascii")
        except UnicodeDecodeError as err:
            raise DataError(f"{self.idx_path}: not a text index ({err})") from None
        lines = text.splitlines()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # numpy warns, and stops, at a bad number
                numbers = np.fromstring(text, dtype=np.int64, sep=" ")
        except (ValueError, OverflowError, DeprecationWarning):
            numbers = None
        rows = sum(1 for line in lines if line.strip())
        if numbers is None or len(numbers) != 2 * rows:
            raise DataError(f"{self.idx_path}: {_bad_index_line(lines)}")
        table = numbers.reshape(-1, 2)
        if not len(table):
            raise DataError(f"{self.idx_path}: no records")
        order = np.argsort(table[:, 0], kind="stable")
        keys, offsets = table[order, 0], table[order, 1]
        repeated = np.flatnonzero(np.diff(keys) == 0)
        if len(repeated):
            raise DataError(f"{self.idx_path}: key {keys[repeated[0]]} appears more than once")
        bad = np.flatnonzero((offsets < 0) | (offsets + 8 > self.size) | (offsets % 4 != 0))
        if len(bad):
            key, at = int(keys[bad[0]]), int(offsets[bad[0]])
            problem = "is not 4-byte aligned" if at % 4 and 0 <= at < self.size else "is past"
            raise DataError(
                f"{self.idx_path}: key {key}: offset {at} {problem} "
                f"{'the end of ' if problem == 'is past' else 'in '}{self.rec_path} "
                f"({self.size} bytes); the index belongs to another file or train.rec is "
                "truncated"
            )
        return keys, offsets

    def _layout(self) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
        """(image keys, identity records' (keys, offsets) or None) from record 0."""
        if not len(self.index_keys) or self.index_keys[0] != 0:
            return self.index_keys, None  # no header record: every key is an image
        labels, payload = split_record(self.record(0), self.where(0))
        if payload or len(labels) == 1:
            # DALI's layout: record 0 is an image. InsightFace's header has 2 labels and no
            # image bytes, so images with label vectors are not taken for a header
            return self.index_keys, None
        if len(labels) != 2:
            raise DataError(
                f"{self.where(0)}: the header record holds {len(labels)} labels; InsightFace's "
                "holds 2: [first identity key, end of the identity keys]"
            )
        first, end = (class_of(float(v), f"{self.where(0)}: header") for v in labels)
        if not 1 < first < end:
            raise DataError(
                f"{self.where(0)}: header labels [{first}, {end}] do not name image keys "
                "1..a-1 and identity keys a..b-1 (1 < a < b)"
            )
        images = np.arange(1, first, dtype=np.int64)
        identities = np.arange(first, end, dtype=np.int64)
        self._require_keys(images, "image")
        self._require_keys(identities, "identity")
        return images, (
            identities,
            self.index_offsets[np.searchsorted(self.index_keys, identities)],
        )

    def _require_keys(self, keys: np.ndarray, kind: str) -> None:
        found = np.isin(keys, self.index_keys)
        if not found.all():
            missing = int(keys[np.argmin(found)])
            raise DataError(
                f"{self.idx_path}: no record with key {missing}, which the header record "
                f"(key 0) names as an {kind} key"
            )

    # ------------------------------------------------------------------ labels

    def _image_labels(self, keys: np.ndarray) -> np.ndarray:
        """int64 [N] classes of the image records ``keys``, chunk by chunk."""
        offsets = self.index_offsets[np.searchsorted(self.index_keys, keys)]
        labels = np.empty(len(keys), dtype=np.int64)
        for start in range(0, len(keys), CHUNK):
            stop = start + CHUNK
            values = self._first_labels(keys[start:stop], offsets[start:stop])
            labels[start:stop] = self._classes(keys[start:stop], values)
        return labels

    def _first_labels(self, keys: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """float64 [n]: each record's label (``label[0]`` of a vector), read from the words
        of its head where the first part holds the whole header; from the joined record
        (which checks every part) otherwise."""
        words, last = self._word_array(), self.size // 4 - 1
        at = offsets // 4

        def word(shift: int) -> np.ndarray:
            return words[np.minimum(at + shift, last)]

        magic, lrec = word(0), word(1)
        bad = np.flatnonzero(magic != MAGIC)
        if len(bad):
            self._read(int(keys[bad[0]]), int(offsets[bad[0]]))  # raises, naming key and byte
        cflag, length = lrec >> LENGTH_BITS, (lrec & LENGTH_MASK).astype(np.int64)
        flag = word(2).astype(np.int64)
        whole = (cflag == 0) & (length >= HEADER.size + 4 * flag)
        whole &= offsets + 8 + length <= self.size
        scalar, vector = word(3).view("<f4"), word(8).view("<f4")
        values = np.where(flag > 0, vector, scalar).astype(np.float64)
        for i in np.flatnonzero(~whole):  # split, short, truncated or corrupt: the slow path
            key = int(keys[i])
            labels, _ = split_record(self._read(key, int(offsets[i])), self.where(key))
            values[i] = labels[0]
        return values

    def _classes(self, keys: np.ndarray, values: np.ndarray) -> np.ndarray:
        ok = np.isfinite(values) & (values >= 0) & (values < 2**31)
        ok[ok] &= values[ok] == np.floor(values[ok])
        if not ok.all():
            key = int(keys[np.argmin(ok)])
            class_of(float(values[np.argmin(ok)]), self.where(key))  # raises
        return values.astype(np.int64)

    def _check_identities(self, keys: np.ndarray, offsets: np.ndarray) -> None:
        """The identity records tile the image keys in order, each over images of one class."""
        bounds = np.empty((len(keys), 2), dtype=np.int64)
        for start in range(0, len(keys), CHUNK):
            stop = start + CHUNK
            bounds[start:stop] = self._ranges(keys[start:stop], offsets[start:stop])
        starts, ends = bounds[:, 0], bounds[:, 1]
        expected = np.concatenate([[1], ends[:-1]])
        bad = np.flatnonzero((starts != expected) | (ends <= starts))
        if len(bad) or ends[-1] != len(self.keys) + 1:
            i = int(bad[0]) if len(bad) else len(keys) - 1
            raise DataError(
                f"{self.where(int(keys[i]))}: identity record [{starts[i]}, {ends[i]}) does not "
                f"continue the identities before it (expected a range from {expected[i]}, the "
                f"last ending at {len(self.keys) + 1}, after image key {len(self.keys)})"
            )
        counts = ends - starts
        classes = self.labels[starts - 1]
        wrong = np.flatnonzero(self.labels != np.repeat(classes, counts))
        if len(wrong):
            image = int(self.keys[wrong[0]])
            j = int(np.searchsorted(ends, image, side="right"))
            raise DataError(
                f"{self.where(int(keys[j]))}: identity record [{starts[j]}, {ends[j]}) spans "
                f"images of different classes: key {starts[j]} has label {classes[j]}, key "
                f"{image} label {self.labels[wrong[0]]}"
            )
        if len(np.unique(classes)) != len(classes):
            raise DataError(
                f"{self.rec_path}: {len(classes)} identity records but only "
                f"{len(np.unique(classes))} distinct classes among their images"
            )

    def _ranges(self, keys: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """int64 [n, 2]: ``[start, end)`` of each identity record."""
        ranges = np.empty((len(keys), 2), dtype=np.int64)
        for i, (key, offset) in enumerate(zip(keys.tolist(), offsets.tolist(), strict=True)):
            labels, _ = split_record(self._read(key, offset), self.where(key))
            if len(labels) != 2:
                raise DataError(
                    f"{self.where(key)}: an identity record holds [start, end) of its image "
                    f"keys, this one {len(labels)} label(s)"
                )
            ranges[i] = [class_of(float(v), f"{self.where(key)}: range") for v in labels]
        return ranges

    def _read_property(self) -> tuple[int, tuple[int, int] | None]:
        """(classes, (H, W) or None), checked against the labels: classes 0..K-1 all used."""
        used = np.unique(self.labels)
        path = self.folder / PROPERTY
        if not path.is_file():
            classes, shape = int(used[-1]) + 1 if len(used) else 0, None
        else:
            classes, shape = _parse_property(path)
        if len(used) and used[-1] >= classes:
            raise DataError(
                f"{path}: says {classes} classes, but train.rec has labels up to {used[-1]}"
                + f" ({self.where(int(self.keys[np.argmax(self.labels)]))})"
            )
        if len(used) != classes:
            missing = np.setdiff1d(np.arange(classes), used)[:5].tolist()
            source = str(path) if path.is_file() else f"{self.rec_path} (labels 0..{classes - 1})"
            raise DataError(
                f"{source}: {classes} classes, but the images of train.rec use {len(used)} of "
                f"them (no image of class {', '.join(map(str, missing))}"
                f"{', ...' if classes - len(used) > 5 else ''})"
            )
        return classes, shape


def _parse_property(path: Path) -> tuple[int, tuple[int, int]]:
    text = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        classes, height, width = (int(part) for part in text.split(","))
    except ValueError:
        raise DataError(f"{path}: {text[:40]!r} is not 'classes,height,width'") from None
    if min(classes, height, width) < 1:
        raise DataError(f"{path}: {text!r}: every value must be positive")
    return classes, (height, width)


def _part_error(cflag: int, inside: bool) -> str:
    if cflag > 3:
        return f"cflag {cflag} is not a record part (0-3)"
    if inside:
        return f"cflag {cflag} where a split record continues (2 or 3 expected): a record cut short"
    return f"cflag {cflag}: the middle or end of a split record, not a record start"


def _bad_index_line(lines: list[str]) -> str:
    """The first line of ``train.idx`` that is not ``key<TAB>offset`` (two integers)."""
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not all(f.lstrip("-").isdigit() for f in fields):
            return f"line {number}: {line[:60]!r} is not 'key<TAB>offset'"
    return "not a list of 'key<TAB>offset' lines"
