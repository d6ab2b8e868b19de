"""A RecordIO writer for tests, written from the format's spec, independent of xcos's reader.

``encode_record`` is dmlc-core's ``RecordIOWriter::WriteRecord``: where the magic appears at a
4-byte-aligned position of the data, the record is split there and that magic dropped, the
parts flagged 1 (first), 2 (middle), 3 (last); ``pack`` is MXNet's ``recordio.pack`` (header
``IfQQ``, then the float32 label vector when there is one, then the image bytes).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)


def pack(label: float | Sequence[float], image: bytes, id: int = 0, id2: int = 0) -> bytes:
    """A record's data: header (flag, label, id, id2), the label vector if any, the image."""
    if isinstance(label, (int, float)):
        return struct.pack("<IfQQ", 0, float(label), id, id2) + image
    vector = np.asarray(label, dtype="<f4")
    return struct.pack("<IfQQ", len(vector), 0.0, id, id2) + vector.tobytes() + image


def encode_record(data: bytes) -> bytes:
    """The bytes dmlc's writer puts in the file for one record (parts split at the magic)."""
    out, start = bytearray(), 0
    for i in range(0, len(data) // 4 * 4, 4):
        if data[i : i + 4] == MAGIC_BYTES:
            out += struct.pack("<II", MAGIC, ((1 if start == 0 else 2) << 29) | (i - start))
            out += data[start:i]
            start = i + 4
    out += struct.pack("<II", MAGIC, ((3 if start else 0) << 29) | (len(data) - start))
    out += data[start:] + b"\0" * (-len(data) % 4)
    return bytes(out)


def part_flags(rec: bytes) -> list[int]:
    """The cflag of every part in a file, in order (to show that a test really splits)."""
    flags, position = [], 0
    while position < len(rec):
        _, lrec = struct.unpack_from("<II", rec, position)
        flags.append(lrec >> 29)
        position += 8 + ((lrec & (2**29 - 1)) + 3) // 4 * 4
    return flags


def write_rec(
    folder: Path, records: Sequence[tuple[int, bytes]], prop: str | None = None
) -> dict[int, int]:
    """``train.rec`` and ``train.idx`` of ``(key, data)`` records in that order, and
    ``property`` when given; returns each key's offset."""
    folder.mkdir(parents=True, exist_ok=True)
    rec, offsets = bytearray(), {}
    for key, data in records:
        offsets[key] = len(rec)
        rec += encode_record(data)
    (folder / "train.rec").write_bytes(bytes(rec))
    (folder / "train.idx").write_text("".join(f"{k}\t{o}\n" for k, o in offsets.items()))
    if prop is not None:
        (folder / "property").write_text(prop)
    return offsets


def insightface_records(
    per_class: Sequence[Sequence[bytes]], label_vectors: bool = False
) -> list[tuple[int, bytes]]:
    """InsightFace's layout: header record 0 ``[N+1, N+1+K]``, images 1..N class by class
    (label vectors ``[class, 0.5]`` with ``label_vectors``), one ``[start, end)`` record per
    class. Record 0 is written last, as MXNet's InsightFace scripts write it."""
    images, ranges, key = [], [], 1
    for number, faces in enumerate(per_class):
        ranges.append((key, key + len(faces)))
        for face in faces:
            images.append((key, pack([number, 0.5] if label_vectors else number, face)))
            key += 1
    identities = [(key + i, pack(list(bounds), b"")) for i, bounds in enumerate(ranges)]
    header = (0, pack([key, key + len(per_class)], b""))
    return [*images, *identities, header]
