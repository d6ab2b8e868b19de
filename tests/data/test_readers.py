"""Pair-set readers: LFW protocol files, InsightFace .bin pickles and packs."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import require_shared
from xcos.data.insightface_bin import read_insightface_bin
from xcos.data.lfw import read_lfw, read_lfw_people
from xcos.data.pack import read_pack, write_pack
from xcos.errors import DataError, UnalignedImageError
from xcos.registry import PAIR_SETS

# --- LFW: real protocol files (no image decoding beyond one face) ----------------------------


def test_lfw_view2_pairs_real():
    pair_set = read_lfw(str(require_shared("data/lfw/pairs.txt")))
    assert pair_set.name == "lfw"
    assert len(pair_set) == 6000 and pair_set.pairs.shape == (6000, 2)
    assert len(pair_set.images) == 7701 == len(set(pair_set.images))
    assert pair_set.pairs.min() == 0 and pair_set.pairs.max() == 7700
    for fold in range(10):
        labels = pair_set.labels[pair_set.folds == fold]
        # each set of the file: 300 matched lines, then 300 mismatched
        assert labels.tolist() == [1] * 300 + [0] * 300
    identities = np.array([Path(p).parent.name for p in pair_set.images])
    same = identities[pair_set.pairs[:, 0]] == identities[pair_set.pairs[:, 1]]
    assert (same == (pair_set.labels == 1)).all()
    assert pair_set.extra["name_a"][0] == identities[pair_set.pairs[0, 0]]
    assert all(Path(p).is_file() for p in pair_set.images)
    assert pair_set.image(0).shape == (250, 250, 3)  # the photo as it is
    # never resized into a 112x112 "face": LFW photos are aligned (through the cache) first
    with pytest.raises(
        UnalignedImageError, match=r"is 250x250 pixels; expected an aligned 112x112"
    ):
        pair_set.image(0, 112)


@pytest.mark.parametrize(
    ("file", "count"), [("pairsDevTest.txt", 1000), ("pairsDevTrain.txt", 2200)]
)
def test_lfw_view1_pairs_real(file, count):
    pair_set = read_lfw(str(require_shared(f"data/lfw/{file}")))
    assert len(pair_set) == count and np.bincount(pair_set.labels).tolist() == [count // 2] * 2
    assert pair_set.name == ("lfw_dev_test" if "Test" in file else "lfw_dev_train")
    # View 1 has no folds: 10 contiguous blocks per half, each fold balanced
    for fold in range(10):
        assert np.bincount(pair_set.labels[pair_set.folds == fold]).tolist() == [count // 20] * 2


def test_lfw_people_real():
    sets = read_lfw_people(str(require_shared("data/lfw/people.txt")))
    assert len(sets) == 10 and [len(s) for s in sets][:2] == [601, 555]
    assert sum(len(s) for s in sets) == 5749
    assert sum(n for s in sets for _, n in s) == 13233
    (dev_train,) = read_lfw_people(str(require_shared("data/lfw/peopleDevTrain.txt")))
    assert len(dev_train) == 4038 and sum(n for _, n in dev_train) == 9525
    assert dev_train[0] == ("AJ_Cook", 1)


# --- LFW: synthetic files ---------------------------------------------------------------------


def fake_lfw(root: Path, lines: list[str], names=("Ann", "Bob", "Cid"), count=3) -> Path:
    """A pairs file plus ``images/<Name>/<Name>_000k.jpg`` (empty files: nothing is decoded)."""
    for name in names:
        (root / "images" / name).mkdir(parents=True, exist_ok=True)
        for k in range(1, count + 1):
            (root / "images" / name / f"{name}_{k:04d}.jpg").touch()
    path = root / "pairs.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


VIEW2 = ["2\t2", "Ann 1 2", "Bob 1 3", "Ann 1 Bob 1", "Cid 2 Ann 2"]
VIEW2 += ["Cid 1 3", "Ann 1 2", "Bob 2 Cid 3", "Ann 3 Cid 1"]


def test_lfw_view2_synthetic_folds_and_shared_images(tmp_path):
    pair_set = read_lfw(str(fake_lfw(tmp_path, VIEW2)))
    assert pair_set.labels.tolist() == [1, 1, 0, 0] * 2
    assert pair_set.folds.tolist() == [0] * 4 + [1] * 4
    # "Ann 1 2" appears twice and Ann_0001 in four pairs: each image is listed once
    assert len(pair_set.images) == len(set(pair_set.images)) == 9
    assert (pair_set.pairs[0] == pair_set.pairs[5]).all()
    assert pair_set.images[pair_set.pairs[2, 1]].endswith("images/Bob/Bob_0001.jpg")
    assert pair_set.extra["name_b"][3] == "Ann"


def test_lfw_view1_folds_balanced_and_small(tmp_path):
    lines = ["20"] + ["Ann 1 2"] * 20 + ["Ann 1 Bob 1"] * 20
    pair_set = read_lfw(str(fake_lfw(tmp_path, lines)))
    assert pair_set.folds.tolist() == [k // 2 for k in range(20)] * 2
    assert len(pair_set.images) == 3
    small = read_lfw(str(fake_lfw(tmp_path, ["3", *["Ann 1 2"] * 3, *["Ann 1 Bob 1"] * 3])))
    assert small.folds.tolist() == [0, 1, 2, 0, 1, 2]
    # a View 2 header with a single set keeps that set as one fold
    one_set = read_lfw(str(fake_lfw(tmp_path, ["1 3", *["Ann 1 2"] * 3, *["Ann 1 Bob 1"] * 3])))
    assert one_set.folds.tolist() == [0] * 6


def test_lfw_release_layout_and_explicit_images(tmp_path):
    # official release: lfw/<Name>/... next to pairs.txt, no images/ sub-folder
    (tmp_path / "Ann").mkdir()
    for k in (1, 2):
        (tmp_path / "Ann" / f"Ann_{k:04d}.jpg").touch()
    (tmp_path / "p.txt").write_text("1\nAnn 1 2\nAnn 1 Ann 2\n")
    assert read_lfw(str(tmp_path / "p.txt")).images[0] == str(tmp_path / "Ann" / "Ann_0001.jpg")
    other = tmp_path / "elsewhere"
    (other / "Ann").mkdir(parents=True)
    for k in (1, 2):
        (other / "Ann" / f"Ann_{k:04d}.jpg").touch()
    pair_set = read_lfw(str(tmp_path / "p.txt"), images=str(other), name="mine")
    assert pair_set.name == "mine" and pair_set.images[0].startswith(str(other))
    spec = {"type": "lfw", "path": str(tmp_path / "p.txt"), "images": str(other)}
    assert len(PAIR_SETS.build(spec, "test.pair_sets[0]")) == 2


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["ten 300", "Ann 1 2"], "pairs.txt:1: bad header"),
        (["1 2 3", "Ann 1 2"], "pairs.txt:1: bad header"),
        (["0"], "pairs.txt:1: bad header"),
        (["1 1", "Ann 1 Bob 1", "Ann 1 Bob 1"], "pairs.txt:2: expected 'Name i j'"),
        (["1 1", "Ann 1 2", "Ann 1 2"], "pairs.txt:3: expected 'Name1 i Name2 j'"),
        (["1 1", "Ann 1 x", "Ann 1 Bob 1"], "pairs.txt:2: image number must be a positive"),
        (["1 1", "Ann 1 2", "Ann 0 Bob 1"], "pairs.txt:3: image number must be a positive"),
        (["1 1", "Ann 1 2", "Ann -1 Bob 1"], "pairs.txt:3: image number must be a positive"),
        (["2 1", "Ann 1 2", "Ann 1 Bob 1"], "truncated: the header promises 4 pairs"),
        (["1 1", "Ann 1 2", "", "Ann 1 Bob 1", "Bob 1 2"], "pairs.txt:5: unexpected line"),
        ([""], "empty file"),
    ],
)
def test_lfw_malformed_pairs_name_file_and_line(tmp_path, lines, message):
    with pytest.raises(DataError, match=r"pairs\.txt") as error:
        read_lfw(str(fake_lfw(tmp_path, lines)))
    assert message in str(error.value)


def test_lfw_missing_images_listed_with_count(tmp_path):
    lines = ["1 4", "Ann 1 2", "Ann 1 7", "Ann 8 9", "Dan 1 2"]
    lines += ["Ann 1 Bob 1", "Eve 1 Bob 1", "Cid 1 Bob 1", "Ann 1 Cid 1"]
    with pytest.raises(DataError) as error:
        read_lfw(str(fake_lfw(tmp_path, lines)))
    message = str(error.value)
    # Ann_0007, Ann_0008, Ann_0009, Dan_0001, Dan_0002, Eve_0001 are missing
    assert "6 of 10 image(s) not found" in message and "(and 1 more)" in message
    assert "Ann/Ann_0007.jpg" in message and "Dan/Dan_0002.jpg" in message
    assert "Eve_0001" not in message and "pairs.txt" in message


def test_lfw_missing_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_lfw(str(tmp_path / "nope.txt"))
    path = fake_lfw(tmp_path, VIEW2)
    with pytest.raises(DataError, match="images folder"):
        read_lfw(str(path), images=str(tmp_path / "nowhere"))


def test_lfw_people_synthetic_and_malformed(tmp_path):
    path = tmp_path / "people.txt"
    path.write_text("2\n2\nAnn 3\nBob 1\n1\nCid 2\n")
    assert read_lfw_people(str(path)) == [[("Ann", 3), ("Bob", 1)], [("Cid", 2)]]
    path.write_text("2\nAnn 3\nBob 1\n")
    assert read_lfw_people(str(path)) == [[("Ann", 3), ("Bob", 1)]]
    for text, message in [
        ("2\nAnn 3\nBob x\n", "people.txt:3: number of images"),
        ("2\nAnn 3\nBob 1 2\n", "people.txt:3: expected 'Name number_of_images'"),
        ("2\n1\nAnn 3\n", "truncated: the header promises 2 sets"),
        ("2\nAnn 3\n", "truncated: the header promises 2 people"),
        ("1\nAnn 3\nBob 1\n", "people.txt:3: unexpected line"),
        ("x\n", "people.txt:1: expected a count"),
    ]:
        path.write_text(text)
        with pytest.raises(DataError) as error:
            read_lfw_people(str(path))
        assert message in str(error.value), text


# --- InsightFace .bin -------------------------------------------------------------------------


def encode(colour, size=8, fmt="PNG", mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (size, size), colour).save(buffer, fmt)
    return buffer.getvalue()


def colours(count: int) -> list[tuple[int, int, int]]:
    return [(10 * i, 255 - 10 * i, (37 * i) % 256) for i in range(count)]


def write_bin(path: Path, content, protocol=pickle.DEFAULT_PROTOCOL) -> Path:
    path.write_bytes(pickle.dumps(content, protocol=protocol))
    return path


def python2_bin(images: list[bytes], flags: list[bool]) -> bytes:
    """Opcodes as Python 2 writes ``(list of str, list of bool)`` at protocol 2 (BINSTRING)."""
    out = b"\x80\x02(]("
    for data in images:
        out += b"T" + struct.pack("<i", len(data)) + data
    out += b"e](" + b"".join(b"\x88" if f else b"\x89" for f in flags) + b"et."
    return out


FLAGS = [True, False, False, True, True, False, True, False, False, True, True, False]


def test_bin_round_trip(tmp_path):
    path = write_bin(tmp_path / "agedb_30.bin", ([encode(c) for c in colours(24)], FLAGS))
    pair_set = read_insightface_bin(str(path), image_size=8)
    assert pair_set.name == "agedb_30"
    assert pair_set.images.dtype == np.uint8 and pair_set.images.shape == (24, 3, 8, 8)
    assert pair_set.images[:, :, 3, 5].tolist() == [list(c) for c in colours(24)]
    assert pair_set.pairs.tolist() == [[2 * i, 2 * i + 1] for i in range(12)]
    assert pair_set.labels.tolist() == [int(f) for f in FLAGS]
    assert pair_set.folds.tolist() == [0, 0, 1, 2, 3, 4, 5, 5, 6, 7, 8, 9]
    assert pair_set.image(5).shape == (8, 8, 3)


def test_bin_decodes_rgb_and_never_resizes(tmp_path):
    images = [encode((255, 0, 0), 20, "JPEG"), encode(128, 20, "PNG", mode="L")]
    path = write_bin(tmp_path / "x.bin", (images, [True]))
    pair_set = read_insightface_bin(str(path), None, 20)
    red = pair_set.images[0].reshape(3, -1).mean(axis=1)
    assert red[0] > 240 and red[1] < 15 and red[2] < 15  # channel 0 is red
    assert pair_set.images.shape == (2, 3, 20, 20) and (pair_set.images[1] == 128).all()
    assert pair_set.folds.tolist() == [0]
    with pytest.raises(UnalignedImageError, match=r"x\.bin: image 0 \(pair 0\) is a 20x20 face, "):
        read_insightface_bin(str(path), None, 8)


@pytest.mark.parametrize(
    "variant", ["numpy", "protocol0", "protocol2", "protocol5", "list_container", "python2"]
)
def test_bin_variants(tmp_path, variant):
    images = [encode(c) for c in colours(4)]
    flags = [True, False]
    path = tmp_path / "v.bin"
    if variant == "numpy":  # encoded bytes as uint8 arrays, flags as a bool array
        arrays = [np.frombuffer(b, dtype=np.uint8).copy() for b in images]
        write_bin(path, (arrays, np.array(flags)))
    elif variant.startswith("protocol"):
        write_bin(path, (images, [np.bool_(f) for f in flags]), int(variant[-1]))
    elif variant == "list_container":
        write_bin(path, [images, [1, 0]])
    else:
        path.write_bytes(python2_bin(images, flags))
    pair_set = read_insightface_bin(str(path), image_size=8)
    assert pair_set.labels.tolist() == [1, 0]
    assert pair_set.images[:, :, 0, 0].tolist() == [list(c) for c in colours(4)]


class Evil:
    def __init__(self, function, argument):
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


@pytest.mark.parametrize("where", ["images", "flags", "top"])
def test_bin_refuses_code_without_running_it(tmp_path, where):
    marker = tmp_path / "marker"
    evil = Evil(os.system, f"touch {marker}")
    content = {
        "images": ([evil, encode(1)], [True]),
        "flags": ([encode(1), encode(2)], [evil]),
        "top": evil,
    }[where]
    path = write_bin(tmp_path / "evil.bin", content)
    with pytest.raises(DataError) as error:
        read_insightface_bin(str(path))
    assert f"refused to load global {os.system.__module__}.system" in str(error.value)
    assert "evil.bin" in str(error.value)
    assert not marker.exists()


def test_bin_refuses_eval_and_classes(tmp_path):
    path = write_bin(tmp_path / "e.bin", Evil(eval, "1 + 1"))
    with pytest.raises(DataError, match=r"builtins\.eval"):
        read_insightface_bin(str(path))
    path = write_bin(tmp_path / "c.bin", ([encode(1), encode(2)], [Path("x")]))
    with pytest.raises(DataError, match=r"refused to load global pathlib"):
        read_insightface_bin(str(path))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (([b"a", b"b", b"c"], [True, False]), "3 images but 2 issame flags"),
        (([], []), "holds no pairs"),
        ({"images": []}, "expected a pickle of (list of encoded images"),
        (([b"a"], [True], [1]), "got a tuple of 3 item(s)"),
        (([b"a", "text"], [True]), "image 1 is str"),
        (([b"a", b"b"], [2]), "issame flag 0 is int 2"),
        ((b"ab", [True]), "expected a list or 1-D array"),
    ],
)
def test_bin_bad_structure(tmp_path, content, message):
    with pytest.raises(DataError, match=r"s\.bin") as error:
        read_insightface_bin(str(write_bin(tmp_path / "s.bin", content)))
    assert message in str(error.value)


def test_bin_undecodable_image_and_bad_pickles(tmp_path):
    images = [encode(c) for c in colours(4)]
    images[3] = b"not an image at all"
    with pytest.raises(DataError, match=r"image 3 \(pair 1\) cannot be decoded"):
        read_insightface_bin(str(write_bin(tmp_path / "x.bin", (images, [True, False]))), None, 8)
    data = pickle.dumps((images, [True, False]))
    (tmp_path / "cut.bin").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.bin").write_bytes(b"\x00\x01 definitely not a pickle")
    for name in ("cut.bin", "junk.bin"):
        with pytest.raises(DataError, match=f"{name}: not a readable pickle"):
            read_insightface_bin(str(tmp_path / name))
    with pytest.raises(DataError, match="does not exist"):
        read_insightface_bin(str(tmp_path / "absent.bin"))


# --- packs ------------------------------------------------------------------------------------


def pack_inputs(count=6, size=8):
    rng = np.random.default_rng(1)
    return {
        "faces": rng.integers(0, 256, (count, 3, size, size), dtype=np.uint8),
        "pairs": np.array([[0, 1], [2, 3], [4, 5], [1, 4]]),
        "labels": np.array([1, 0, 1, 0]),
        "folds": np.array([0, 0, 1, 1]),
        "image_ids": [f"person/{k}.jpg" for k in range(count)],
    }


def test_pack_round_trip_memory_mapped(tmp_path):
    inputs = pack_inputs()
    source = {"pairs.txt": {"sha256": "ab" * 32}}
    alignment = {"method": "5-point", "fallbacks": 2}
    extra = {"name_a": list("abcd")}
    folder = write_pack(
        tmp_path / "set.pack", **inputs, source=source, alignment=alignment, extra=extra
    )
    assert os.listdir(tmp_path) == ["set.pack"]  # no temporary folder left behind
    pair_set = read_pack(str(folder))
    assert pair_set.name == "set"
    assert isinstance(pair_set.images, np.memmap)
    assert np.array_equal(pair_set.images, inputs["faces"])
    for key in ("pairs", "labels", "folds"):
        assert getattr(pair_set, key).dtype == np.int64
        assert np.array_equal(getattr(pair_set, key), inputs[key])
    assert pair_set.extra == extra
    assert pair_set.image(2).tolist() == inputs["faces"][2].transpose(1, 2, 0).tolist()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["images"] == 6 and manifest["pairs"] == 4 and manifest["image_size"] == 8
    assert manifest["source"] == source and manifest["alignment"] == alignment
    assert json.loads((folder / "image_ids.json").read_text()) == inputs["image_ids"]
    built = PAIR_SETS.build({"type": "pack", "path": str(folder), "name": "x"}, "pair_sets[0]")
    assert built.name == "x" and len(built) == 4


def test_pack_overwrite(tmp_path):
    inputs = pack_inputs()
    folder = write_pack(str(tmp_path / "a.pack"), **inputs)
    with pytest.raises(DataError, match="already exists"):
        write_pack(folder, **inputs)
    inputs["labels"] = np.array([0, 0, 0, 0])
    write_pack(folder, **inputs, overwrite=True)
    assert read_pack(str(folder)).labels.tolist() == [0, 0, 0, 0]
    assert os.listdir(tmp_path) == ["a.pack"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"faces": np.zeros((6, 3, 8, 8), np.float32)}, "faces must be a uint8 numpy array"),
        ({"faces": np.zeros((6, 8, 8, 3), np.uint8)}, "faces must have shape [M, 3, S, S]"),
        ({"faces": np.zeros((0, 3, 8, 8), np.uint8)}, "faces is empty"),
        ({"pairs": np.array([[0, 1, 2]] * 4)}, "pairs must have shape [N, 2]"),
        ({"pairs": np.array([[0, 1]] * 3 + [[0, 6]])}, "indices must lie in [0, 6)"),
        ({"pairs": np.array([[0, 1]] * 3 + [[-1, 2]])}, "indices must lie in [0, 6)"),
        ({"pairs": np.zeros((4, 2), np.float64)}, "pairs must hold integers"),
        ({"labels": np.array([1, 0, 2, 0])}, "pair 2 has 2"),
        ({"labels": np.array([1, 0, 1])}, "labels must have shape [4]"),
        ({"folds": np.array([0, 0, -1, 1])}, "folds must be >= 0"),
        ({"image_ids": ["a"] * 5}, "expected a list of 6 strings (one per face), got 5"),
        ({"image_ids": ["a"] * 5 + [7]}, "item 5 is int"),
        ({"source": {"when": object()}}, "source is not JSON-serialisable"),
        ({"alignment": {"x": float("nan")}}, "alignment is not JSON-serialisable"),
        ({"extra": {"name": ["a"]}}, "extra['name']: expected a list of 4 strings (one per pair)"),
    ],
)
def test_write_pack_rejects_bad_inputs(tmp_path, change, message):
    inputs = pack_inputs()
    inputs.update(change)
    with pytest.raises(DataError) as error:
        write_pack(tmp_path / "bad.pack", **inputs)
    assert message in str(error.value) and "bad.pack" in str(error.value)
    assert os.listdir(tmp_path) == []


def test_write_pack_needs_pack_suffix(tmp_path):
    with pytest.raises(DataError, match=r"must end in '\.pack'"):
        write_pack(tmp_path / "bad", **pack_inputs())


@pytest.fixture
def pack(tmp_path) -> Path:
    return write_pack(tmp_path / "p.pack", **pack_inputs())


def test_read_pack_truncated_faces(pack):
    data = (pack / "faces.npy").read_bytes()
    (pack / "faces.npy").write_bytes(data[: len(data) - 100])
    with pytest.raises(DataError, match=r"faces\.npy: truncated or corrupt"):
        read_pack(str(pack))
    (pack / "faces.npy").write_bytes(data[:50])  # cut inside the header
    with pytest.raises(DataError, match=r"faces\.npy: truncated or corrupt"):
        read_pack(str(pack))


@pytest.mark.parametrize(
    "member",
    ["faces.npy", "pairs.npy", "labels.npy", "folds.npy", "image_ids.json", "manifest.json"],
)
def test_read_pack_missing_member(pack, member):
    (pack / member).unlink()
    with pytest.raises(DataError, match=f"{member}: missing pack member"):
        read_pack(str(pack))


def test_read_pack_labels_not_binary(pack):
    np.save(pack / "labels.npy", np.array([1, 0, 3, 0], dtype=np.int64))
    with pytest.raises(DataError, match=r"labels\.npy: labels must be 0 or 1; pair 2 has 3"):
        read_pack(str(pack))


def test_read_pack_disagreements_and_corruption(pack):
    manifest = json.loads((pack / "manifest.json").read_text())
    for change, message in [
        ({"version": 2}, "pack format version 2 is not supported"),
        ({"format": "bcolz"}, "not an xcos pack manifest"),
        ({"images": 7}, "faces.npy: shape [6, 3, 8, 8] disagrees with manifest.json"),
        ({"pairs": "4"}, "'pairs' must be a positive integer"),
    ]:
        (pack / "manifest.json").write_text(json.dumps({**manifest, **change}))
        with pytest.raises(DataError, match=r"manifest\.json") as error:
            read_pack(str(pack))
        assert message in str(error.value)
    (pack / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match=r"manifest\.json: corrupt JSON"):
        read_pack(str(pack))
    (pack / "manifest.json").write_text(json.dumps(manifest))
    np.save(pack / "pairs.npy", np.array([[0, 1]] * 4, dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"pairs\.npy: truncated or corrupt"):  # no pickles
        read_pack(str(pack))
    np.save(pack / "pairs.npy", np.array([[0, 1]] * 4, dtype=np.int32))
    with pytest.raises(DataError, match=r"pairs\.npy: dtype int32, expected int64"):
        read_pack(str(pack))
    np.save(pack / "pairs.npy", np.array([[0, 1]] * 3 + [[0, 9]], dtype=np.int64))
    with pytest.raises(DataError, match=r"pairs\.npy: indices must lie in \[0, 6\)"):
        read_pack(str(pack))
    with pytest.raises(DataError, match="does not exist or is not a folder"):
        read_pack(str(pack.parent / "absent.pack"))


def test_pack_faces_are_never_resized_for_another_model(pack):
    from xcos.data.pair_set_specs import load_pair_set

    pair_set = load_pair_set(str(pack), "test.pair_sets.0")
    assert pair_set.source == str(pack) and pair_set.image(0, 8).shape == (8, 8, 3)
    pair_set.check_image_size(8)  # the faces' own size: used as they are
    for refuse in (lambda: pair_set.image(0, 16), lambda: pair_set.check_image_size(16)):
        with pytest.raises(UnalignedImageError, match=r"p: holds aligned 8x8 faces.*16x16") as err:
            refuse()
        assert f"xcos prepare ... --template arcface --size 16 --out {pack}" in str(err.value)


def test_the_lfw_store_finds_an_image_by_any_path_that_leads_to_it(tmp_path, monkeypatch):
    """Paths through a linked folder (``data/lfw`` -> the download) and through the folder
    itself name the same image; a path outside the store is an error that names it."""
    from xcos.data import lfw_people

    monkeypatch.setattr(
        lfw_people, "aligned_faces", lambda paths, align, where: (np.zeros(len(paths)), "key")
    )
    real = fake_lfw(tmp_path / "download", VIEW2).parent / "images"
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "lfw").symlink_to(real, target_is_directory=True)
    store = lfw_people.LFWFaceStore(tmp_path / "data" / "lfw", None, "test")
    assert len(store) == 9
    through_link = [tmp_path / "data/lfw/Bob/Bob_0002.jpg", "data/lfw/Ann/Ann_0001.jpg"]
    monkeypatch.chdir(tmp_path)
    direct = [real / "Bob/Bob_0002.jpg", str(real / "Ann/Ann_0001.jpg")]
    assert store.indices(through_link, "t").tolist() == store.indices(direct, "t").tolist()
    assert store.indices(direct, "t").tolist() == [4, 0]  # sorted: Ann 1-3, Bob 1-3, Cid 1-3
    with pytest.raises(DataError, match=r"Dan_0001\.jpg"):
        store.indices([real / "Dan/Dan_0001.jpg"], "pairs.txt")


def _resident_kib(path: Path) -> int:
    """Resident KiB of this process's mappings of ``path`` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
            inside = len(fields) >= 6 and fields[5] == str(path)
        elif inside and fields[0] == "Rss:":
            total += int(fields[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux's /proc")
def test_release_face_pages_gives_back_what_a_pass_touched(tmp_path):
    faces = np.random.default_rng(0).integers(0, 256, (64, 3, 112, 112), dtype=np.uint8)
    folder = write_pack(
        tmp_path / "set.pack", faces, [[0, 1]], [1], [0], [f"{i}.jpg" for i in range(64)]
    )
    pair_set = read_pack(str(folder))
    file = (folder / "faces.npy").resolve()
    assert int(np.asarray(pair_set.images).sum(dtype=np.int64)) == int(faces.sum(dtype=np.int64))
    assert _resident_kib(file) >= faces.nbytes // 1024 * 9 // 10  # the pass mapped them in
    pair_set.release_face_pages()
    assert _resident_kib(file) < 64  # the old map is gone, the new one untouched
    np.testing.assert_array_equal(pair_set.images, faces)  # the same faces, read afresh
