"""InsightFace RecordIO read without MXNet: the shared MXNet-written sets byte for byte, split
records, label vectors, both layouts, every corrupt-file case, workers and pickling."""

from __future__ import annotations

import csv
import hashlib
import io
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from tests.conftest import require_shared
from tests.helpers.recordio_writer import (
    MAGIC_BYTES,
    encode_record,
    insightface_records,
    pack,
    part_flags,
    write_rec,
)
from xcos.data.recordio import RecordFile
from xcos.errors import BadImageError, DataError

SETS = {"lfw40": (298, 40), "lfw20_shuffled": (120, 20)}


def face_jpeg(seed: int, size: int = 16, comment: bytes = b"") -> bytes:
    """A small synthetic JPEG; ``comment`` goes into a COM segment right after SOI, which
    decoders skip: a way to put the magic inside valid image bytes."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    pixels = np.kron(base, np.ones((size // 4, size // 4, 1), dtype=np.uint8))
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    data = out.getvalue()
    if comment:
        segment = b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment
        data = data[:2] + segment + data[2:]
    return data


def pil_rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def labels_tsv(folder: Path) -> list[dict[str, str]]:
    with (folder / "labels.tsv").open(newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


# --- the sets MXNet 1.9.1 wrote ------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SETS))
def test_mxnet_written_sets_give_exactly_the_stored_bytes_and_classes(name):
    folder = require_shared(f"data/rec/{name}")
    rows = labels_tsv(folder)
    file = RecordFile(folder)
    images, classes = SETS[name]
    assert (len(file), file.num_classes, file.image_shape) == (images, classes, (112, 112))
    assert file.keys.tolist() == sorted(int(row["key"]) for row in rows)
    for row in rows:
        key = int(row["key"])
        assert hashlib.sha256(file.payload(key)).hexdigest() == row["payload_sha256"], key
        assert file.label(key) == int(row["class"]), key
    key = int(rows[5]["key"])
    image = file.image(key)
    assert image.shape == (112, 112, 3) and image.dtype == np.uint8
    # an independent decoder (PIL) of the same bytes: same pixels up to decoder rounding
    assert np.abs(image.astype(int) - pil_rgb(file.payload(key))).max() <= 2


def test_insightface_layout_header_and_identity_records_are_not_images():
    file = RecordFile(require_shared("data/rec/lfw40"))
    assert file.keys.tolist() == list(range(1, 299))  # header [299, 339]: 40 identity records
    for key in (0, 299, 338):
        assert file.payload(key) == b""
        with pytest.raises(DataError, match=rf"key {key} is not an image record"):
            file.label(key)
    assert np.all(np.diff(file.labels) >= 0)  # images stored class by class


# --- split records, label vectors, layouts --------------------------------------------------


def test_split_records_are_joined_with_the_magic_put_back(tmp_path):
    # magic at data offsets 32, 36 (an empty middle part), 44, and at 33 (unaligned: kept)
    comment = b"xx" + MAGIC_BYTES * 2 + b"abcd" + MAGIC_BYTES + b"y" + MAGIC_BYTES + b"zzz"
    faces = [
        face_jpeg(1, comment=comment),
        face_jpeg(2),
        face_jpeg(3, comment=b"xx" + MAGIC_BYTES * 3),
    ]
    records = [(1, pack(0, faces[0])), (2, pack(1, faces[1])), (3, pack(1, faces[2]))]
    records.append((4, pack(0, face_jpeg(4), id=0xCED7230A, id2=0xCED7230A)))  # inside the header
    write_rec(tmp_path, records, "2,16,16")
    flags = part_flags((tmp_path / "train.rec").read_bytes())
    assert flags == [1, 2, 2, 3, 0, 1, 2, 2, 3, 1, 2, 3]  # what dmlc's writer makes of them
    file = RecordFile(tmp_path)
    assert file.labels.tolist() == [0, 1, 1, 0]
    for key, data in records:
        assert file.record(key) == data
        assert file.payload(key) == data[24:]
    assert np.abs(file.image(1).astype(int) - pil_rgb(faces[0])).max() <= 2


def test_label_vectors_give_their_first_label(tmp_path):
    per_class = [[face_jpeg(1), face_jpeg(2)], [face_jpeg(3)]]
    write_rec(tmp_path / "if", insightface_records(per_class, label_vectors=True), "2,16,16")
    file = RecordFile(tmp_path / "if")
    assert file.keys.tolist() == [1, 2, 3] and file.labels.tolist() == [0, 0, 1]
    # DALI's layout with 3-label vectors: record 0 is an image, not a header
    records = [(k, pack([c, 9.0, 7.0], face_jpeg(k))) for k, c in [(0, 1), (1, 0), (2, 1)]]
    write_rec(tmp_path / "dali", records, "2,16,16")
    file = RecordFile(tmp_path / "dali")
    assert file.keys.tolist() == [0, 1, 2] and file.labels.tolist() == [1, 0, 1]
    assert file.payload(0) == face_jpeg(0)


def test_without_property_the_classes_come_from_the_labels(tmp_path):
    write_rec(tmp_path, [(5, pack(1, face_jpeg(1))), (9, pack(0, face_jpeg(2)))])
    file = RecordFile(tmp_path)
    assert (file.keys.tolist(), file.num_classes, file.image_shape) == ([5, 9], 2, None)


# --- corrupt files ----------------------------------------------------------------------------


@pytest.fixture
def good(tmp_path) -> tuple[Path, dict[int, int]]:
    """A small InsightFace-layout set: 3 classes of 2 faces (keys 1-6), identities 7-9."""
    per_class = [[face_jpeg(2 * c), face_jpeg(2 * c + 1)] for c in range(3)]
    offsets = write_rec(tmp_path / "set", insightface_records(per_class), "3,16,16")
    assert RecordFile(tmp_path / "set").labels.tolist() == [0, 0, 1, 1, 2, 2]
    return tmp_path / "set", offsets


def rewrite(path: Path, at: int, data: bytes) -> None:
    content = bytearray(path.read_bytes())
    content[at : at + len(data)] = data
    path.write_bytes(bytes(content))


def test_bad_magic_names_file_key_and_offset(good):
    folder, offsets = good
    rewrite(folder / "train.rec", offsets[4], b"\x00\x00\x00\x00")
    with pytest.raises(
        DataError,
        match=rf"train\.rec: key 4 \(record at byte {offsets[4]}\): magic 0x00000000, "
        r"expected 0xced7230a",
    ):
        RecordFile(folder)


def test_offset_past_the_end_and_unaligned_offsets(good):
    folder, offsets = good
    size = (folder / "train.rec").stat().st_size
    index = (folder / "train.idx").read_text()
    (folder / "train.idx").write_text(index.replace(f"3\t{offsets[3]}\n", f"3\t{size + 400}\n"))
    with pytest.raises(
        DataError,
        match=rf"train\.idx: key 3: offset {size + 400} is past the end of .*train\.rec "
        rf"\({size} bytes\)",
    ):
        RecordFile(folder)
    (folder / "train.idx").write_text(index.replace(f"3\t{offsets[3]}\n", f"3\t{offsets[3] + 2}\n"))
    with pytest.raises(DataError, match=rf"key 3: offset {offsets[3] + 2} is not 4-byte aligned"):
        RecordFile(folder)


def test_a_record_cut_short_is_refused(good):
    folder, offsets = good
    data = (folder / "train.rec").read_bytes()
    last = max(offsets, key=offsets.get)  # the header record, written last
    (folder / "train.rec").write_bytes(data[: offsets[last] + 20])
    with pytest.raises(
        DataError,
        match=rf"key {last} \(record at byte {offsets[last]}\): the record needs 32 bytes up "
        rf"to byte {offsets[last] + 40}, the file ends at byte {offsets[last] + 20}",
    ):
        RecordFile(folder)
    # an image in the middle whose length field runs past the end of the file
    (folder / "train.rec").write_bytes(data)
    rewrite(folder / "train.rec", offsets[2] + 4, struct.pack("<I", 10**8))
    with pytest.raises(
        DataError, match=rf"key 2 \(record at byte {offsets[2]}\): the record needs 100000000 bytes"
    ):
        RecordFile(folder)


def test_a_split_record_cut_short_or_entered_in_the_middle(tmp_path):
    face = face_jpeg(1, comment=b"xx" + MAGIC_BYTES)
    offsets = write_rec(tmp_path, [(0, pack(0, face)), (1, pack(1, face_jpeg(2)))], "2,16,16")
    rec = (tmp_path / "train.rec").read_bytes()
    assert part_flags(rec) == [1, 3, 0]
    second = 8 + 32  # the first part: 32 bytes of data
    rewrite(tmp_path / "train.rec", second, b"\0" * 8)
    with pytest.raises(
        DataError, match=rf"key 0 \(record at byte 0, part at byte {second}\): magic 0x00000000"
    ):
        RecordFile(tmp_path)
    (tmp_path / "train.rec").write_bytes(rec[:second] + encode_record(b"abcd") + rec[offsets[1] :])
    (tmp_path / "train.idx").write_text(f"0\t0\n1\t{second + 12}\n")
    with pytest.raises(
        DataError, match=rf"part at byte {second}\): cflag 0 where a split record continues"
    ):
        RecordFile(tmp_path)
    (tmp_path / "train.rec").write_bytes(rec)
    (tmp_path / "train.idx").write_text(f"0\t{second}\n1\t{offsets[1]}\n")
    with pytest.raises(
        DataError,
        match=rf"key 0 \(record at byte {second}\): cflag 3: the middle or end of a split record",
    ):
        RecordFile(tmp_path)
    (tmp_path / "train.idx").write_text("0\t0\n")
    (tmp_path / "train.rec").write_bytes(rec[: second + 4])
    with pytest.raises(
        DataError, match=rf"part at byte {second}\): the file ends at byte {second + 4}"
    ):
        RecordFile(tmp_path)


@pytest.mark.parametrize(
    ("prop", "message"),
    [
        (
            "4,16,16",
            r"property: 4 classes, but the images of train\.rec use 3 of them "
            r"\(no image of class 3\)",
        ),
        ("2,16,16", r"property: says 2 classes, but train\.rec has labels up to 2 \(.*key 5"),
        ("3;16;16", r"property: '3;16;16' is not 'classes,height,width'"),
    ],
)
def test_a_property_that_disagrees_with_the_labels(good, prop, message):
    folder, _ = good
    (folder / "property").write_text(prop)
    with pytest.raises(DataError, match=message):
        RecordFile(folder)


def test_identity_records_and_labels_must_agree(good, tmp_path):
    folder, offsets = good
    # image 3 relabelled class 0 (4 bytes: the float label after the flag)
    rewrite(folder / "train.rec", offsets[3] + 12, struct.pack("<f", 0.0))
    with pytest.raises(
        DataError,
        match=rf"key 8 \(record at byte {offsets[8]}\): identity record \[3, 5\) spans images of "
        r"different classes: key 3 has label 0, key 4 label 1",
    ):
        RecordFile(folder)
    rewrite(folder / "train.rec", offsets[3] + 12, struct.pack("<f", 1.5))
    with pytest.raises(DataError, match=r"key 3 .*label 1\.5 is not a class number"):
        RecordFile(folder)
    rewrite(folder / "train.rec", offsets[3] + 12, struct.pack("<f", 1.0))
    rewrite(folder / "train.rec", offsets[8] + 8 + 24, struct.pack("<f", 4.0))  # [3, 5) -> [4, 5)
    with pytest.raises(
        DataError,
        match=rf"key 8 \(record at byte {offsets[8]}\): identity record \[4, 5\) does not "
        r"continue the identities before it \(expected a range from 3",
    ):
        RecordFile(folder)


@pytest.mark.parametrize(
    ("index", "message"),
    [
        ("1\t0\n1\t0\n", r"train\.idx: key 1 appears more than once"),
        ("1\t0\nseven\t12\n", r"train\.idx: line 2: 'seven\\t12' is not 'key<TAB>offset'"),
        ("1\t0\n2\n", r"train\.idx: line 2: '2' is not"),
        ("", r"train\.idx: no records"),
    ],
)
def test_a_malformed_index(good, index, message):
    folder, _ = good
    (folder / "train.idx").write_text(index)
    with pytest.raises(DataError, match=message):
        RecordFile(folder)


def test_missing_files_and_an_empty_record_file(good):
    folder, _ = good
    (folder / "train.idx").unlink()
    with pytest.raises(DataError, match=r"train\.idx: missing"):
        RecordFile(folder)
    (folder / "train.idx").write_text("0\t0\n")
    (folder / "train.rec").write_bytes(b"")
    with pytest.raises(DataError, match=r"train\.rec: empty file"):
        RecordFile(folder)


def test_an_undecodable_image_is_named_never_returned(good):
    folder, offsets = good
    rewrite(folder / "train.rec", offsets[5] + 8 + 24 + 40, b"\x00" * 200)  # inside the JPEG
    file = RecordFile(folder)  # the container is fine: the image fails when decoded
    with pytest.raises(
        BadImageError,
        match=rf"train\.rec: key 5 \(record at byte {offsets[5]}\): cannot decode its image",
    ):
        file.image(5)


# --- processes ------------------------------------------------------------------------------


def test_pickled_file_carries_no_mapping():
    file = RecordFile(require_shared("data/rec/lfw40"))
    file.image(3)  # maps the file
    data = pickle.dumps(file)
    assert len(data) < 20_000 and b"JFIF" not in data
    assert pickle.loads(data).payload(7) == file.payload(7)


class Payloads(torch.utils.data.Dataset):
    def __init__(self, file: RecordFile) -> None:
        self.file = file

    def __len__(self) -> int:
        return len(self.file)

    def __getitem__(self, index: int) -> str:
        return hashlib.sha256(self.file.payload(int(self.file.keys[index]))).hexdigest()


@pytest.mark.parametrize(
    ("context", "workers"), [("fork", 2), pytest.param("spawn", 1, marks=pytest.mark.slow)]
)
def test_workers_read_the_same_bytes(context, workers):
    folder = require_shared("data/rec/lfw20_shuffled")
    file = RecordFile(folder)
    file.payload(0)  # mapped in the parent before the workers start
    loader = DataLoader(
        Payloads(file), batch_size=16, num_workers=workers, multiprocessing_context=context
    )
    digests = [digest for batch in loader for digest in batch]
    expected = {int(row["key"]): row["payload_sha256"] for row in labels_tsv(folder)}
    assert digests == [expected[key] for key in file.keys.tolist()]
