"""Image-folder pair sampler, pair lists and bad data."""

import numpy as np
import pytest
from PIL import Image

from xcos.data.image_folder import ImageFolderPairs
from xcos.data.images import read_rgb, to_image, to_tensor
from xcos.data.pair_set_specs import load_pair_set
from xcos.data.pair_sets import read_pair_csv
from xcos.errors import BadImageError, DataError, UnalignedImageError


def write_faces(root, counts, size=16):
    rng = np.random.default_rng(0)
    for identity, count in enumerate(counts):
        folder = root / f"person_{identity}"
        folder.mkdir(parents=True)
        for k in range(count):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{k}.png")
    return root


def test_pairs_deterministic_balanced_and_epoch_dependent(tmp_path):
    data = ImageFolderPairs(str(write_faces(tmp_path, [5] * 6)), image_size=16, seed=1)
    first = [data[i]["image_b"] for i in range(len(data))]
    again = [data[i]["image_b"] for i in range(len(data))]
    assert all((a == b).all() for a, b in zip(first, again, strict=True))
    labels = []
    for epoch in range(40):
        data.set_epoch(epoch)
        rng_items = [data[i] for i in range(len(data))]
        labels += [int(item["label"]) for item in rng_items]
        for item in rng_items:
            assert int(item["label"]) == int(item["identity_a"] == item["identity_b"])
    assert 0.45 < np.mean(labels) < 0.55
    data.set_epoch(1)
    assert any((data[i]["image_b"] != first[i]).any() for i in range(len(data)))


def test_same_pairs_never_pair_an_image_with_itself(tmp_path):
    data = ImageFolderPairs(
        str(write_faces(tmp_path, [2, 2])), image_size=16, flip=False, same_probability=1.0
    )
    for epoch in range(20):
        data.set_epoch(epoch)
        for i in range(len(data)):
            other = data.partner(i, np.random.default_rng([epoch, i]))
            assert other != i and data.labels[other] == data.labels[i]


def test_single_image_identities_do_not_loop(tmp_path):
    data = ImageFolderPairs(
        str(write_faces(tmp_path, [1, 1, 1])), image_size=16, same_probability=1.0
    )
    items = [data[i] for i in range(3)]  # must terminate, as different pairs
    assert all(int(item["label"]) == 0 for item in items)


def test_rgb_order_and_normalisation(tmp_path):
    pixels = np.zeros((8, 8, 3), dtype=np.uint8)
    pixels[..., 0] = 255  # pure red
    Image.fromarray(pixels).save(tmp_path / "red.png")
    Image.fromarray(pixels).convert("L").save(tmp_path / "gray.png")
    tensor = to_tensor(read_rgb(tmp_path / "red.png"))
    assert tensor[0].min() == 1.0 and tensor[1].max() == -1.0 and tensor[2].max() == -1.0
    assert (to_image(tensor) == pixels).all()
    assert read_rgb(tmp_path / "gray.png").shape == (8, 8, 3)


def test_fewer_than_two_identities(tmp_path):
    with pytest.raises(DataError, match="at least 2 identity"):
        ImageFolderPairs(str(write_faces(tmp_path, [3])))


def test_missing_folder_and_empty_class(tmp_path):
    with pytest.raises(DataError, match=r"data\.train\.root: folder .*nope.* does not exist"):
        ImageFolderPairs(str(tmp_path / "nope"))
    root = write_faces(tmp_path / "faces", [2, 2])
    (root / "empty_person").mkdir()
    with pytest.raises(DataError, match=r"1 identity folder.*hold no images.*empty_person"):
        ImageFolderPairs(str(root))


@pytest.mark.parametrize("kind", ["truncated", "not_an_image"])
def test_bad_image_named_or_skipped(tmp_path, kind):
    root = write_faces(tmp_path, [3, 3], size=64)
    bad = root / "person_1" / "1.png"
    if kind == "truncated":
        bad.write_bytes(bad.read_bytes()[:100])
    else:
        bad.write_text("this is not an image")
    data = ImageFolderPairs(str(root), image_size=64)
    index = data.paths.index(bad)
    with pytest.raises(BadImageError, match=r"person_1/1\.png"):
        data.load(index, False)
    skipping = ImageFolderPairs(str(root), image_size=64, skip_bad_images=True)
    assert skipping.skipped_images == [bad]
    assert len(skipping) == 5
    for i in range(len(skipping)):
        skipping[i]


def test_pair_csv(tmp_path):
    write_faces(tmp_path / "img", [2, 2])
    csv_path = tmp_path / "pairs.csv"
    rows = ["path_a,path_b,label"] + [
        "img/person_0/0.png,img/person_0/1.png,1",
        "img/person_0/0.png,img/person_1/0.png,0",
    ] * 10
    csv_path.write_text("\n".join(rows) + "\n")
    pair_set = load_pair_set(str(csv_path))
    assert pair_set.name == "pairs"
    assert len(pair_set) == 20 and len(pair_set.images) == 3  # distinct images only
    assert list(pair_set.folds) == [k // 2 for k in range(20)]
    assert pair_set.labels.tolist() == [1, 0] * 10


def test_pair_csv_errors(tmp_path):
    write_faces(tmp_path / "img", [2])
    bad_label = tmp_path / "bad_label.csv"
    bad_label.write_text("path_a,path_b,label\nimg/person_0/0.png,img/person_0/1.png,yes\n")
    with pytest.raises(DataError, match=r"bad_label\.csv:2: label must be 0 or 1"):
        read_pair_csv(str(bad_label))
    missing = tmp_path / "missing.csv"
    missing.write_text("path_a,path_b,label\nimg/a.png,img/b.png,1\n")
    with pytest.raises(DataError, match=r"2 image\(s\) not found"):
        read_pair_csv(str(missing))
    header = tmp_path / "header.csv"
    header.write_text("a,b,label\nx,y,1\n")
    with pytest.raises(DataError, match="header must start with path_a,path_b,label"):
        read_pair_csv(str(header))
    unknown = tmp_path / "pairs.unknown"
    unknown.write_text("")
    with pytest.raises(DataError, match="cannot tell the format"):
        load_pair_set(str(unknown))
    with pytest.raises(DataError, match=r"test\.pair_sets\.0: .*nowhere\.csv' does not exist"):
        load_pair_set(str(tmp_path / "nowhere.csv"), "test.pair_sets.0")


def test_pair_set_backed_by_an_array_of_aligned_faces():
    from xcos.data.pair_sets import PairSet

    faces = np.zeros((2, 3, 16, 16), dtype=np.uint8)
    faces[1, 0] = 255  # second face pure red
    pair_set = PairSet("mem", faces, np.array([[0, 1]]), np.array([0]), np.array([0]))
    red = pair_set.image(1)
    assert red.shape == (16, 16, 3) and (red[..., 0] == 255).all() and (red[..., 1:] == 0).all()
    with pytest.raises(UnalignedImageError, match="16x16 faces, the model takes 8x8"):
        pair_set.image(1, size=8)


def test_pair_set_format_is_chosen_by_extension(monkeypatch):
    from tests.conftest import require_shared
    from xcos.data import pair_set_specs

    monkeypatch.setattr(pair_set_specs, "ALIGNED_BY_DEFAULT", set())  # reading only, no alignment
    pairs = require_shared("data/lfw/pairs.txt")
    pair_set = load_pair_set(str(pairs), "test.pair_sets.0")
    assert pair_set.name == "lfw" and len(pair_set) == 6000 and len(pair_set.images) == 7701
