"""Preparing pair sets into packs: subsets, alignment hand-off, provenance, the cache."""

import io
import json
import pickle
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from xcos.cli import main
from xcos.data.images import read_rgb
from xcos.data.pack import read_pack
from xcos.data.pair_sets import PairSet, read_pair_csv
from xcos.data.prepare import cached_pack, prepare_pack, subset_folds


@dataclass
class Aligned:
    face: np.ndarray
    fallback: bool = False


class CentreCropAligner:
    """Stands in for the MTCNN aligner where detection is not what is tested."""

    thread_safe = True

    def __init__(self) -> None:
        self.stats = {"images": 0, "faces": 0, "fallbacks": 0}

    def settings(self) -> dict:
        return {"method": "test centre crop", "image_size": 16}

    def align_batch(self, paths):
        self.stats["images"] += len(paths)
        return [Aligned(shrunk(p)) for p in paths]


def shrunk(path) -> np.ndarray:
    """The test aligner's "alignment": the photo scaled to 16x16, RGB."""
    return np.asarray(Image.fromarray(read_rgb(path)).resize((16, 16), Image.BILINEAR))


def write_csv_set(root, count=6):
    rng = np.random.default_rng(0)
    rows = ["path_a,path_b,label,fold"]
    for k in range(count):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(root / f"{k}.png")
    for k in range(count):
        rows.append(f"{k}.png,{(k + 1) % count}.png,{k % 2},{k % 3}")
    (root / "pairs.csv").write_text("\n".join(rows) + "\n")
    return root / "pairs.csv"


def test_subset_folds_reindexes_images():
    pair_set = PairSet(
        "s",
        ["a", "b", "c", "d"],
        np.array([[0, 1], [2, 3], [1, 3]]),
        np.array([1, 0, 1]),
        np.array([0, 1, 0]),
        {"note": ["x", "y", "z"]},
    )
    sub = subset_folds(pair_set, [0])
    assert sub.images == ["a", "b", "d"]
    assert sub.pairs.tolist() == [[0, 1], [1, 2]]
    assert sub.labels.tolist() == [1, 1] and sub.extra == {"note": ["x", "z"]}
    with pytest.raises(ValueError, match="no pairs in folds"):
        subset_folds(pair_set, [7])


def test_prepare_csv_into_pack_keeps_pairs_and_provenance(tmp_path):
    csv_path = write_csv_set(tmp_path)
    pair_set = read_pair_csv(str(csv_path))
    aligner = CentreCropAligner()
    out = prepare_pack(pair_set, tmp_path / "mine.pack", aligner, [csv_path])
    pack = read_pack(str(out))
    assert pack.name == "mine" and len(pack) == 6 and pack.images.shape == (6, 3, 16, 16)
    assert (pack.pairs == pair_set.pairs).all() and (pack.folds == pair_set.folds).all()
    first = shrunk(pair_set.images[0])
    assert (pack.image(0) == first).all()  # RGB, channels restored
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["alignment"]["stats"]["images"] == 6
    assert len(manifest["source"]["sha256"]) == 64


def test_cache_reuses_and_keys_on_content(tmp_path):
    csv_path = write_csv_set(tmp_path)
    aligner = CentreCropAligner()
    cache = tmp_path / "cache"
    first = read_pack(str(cached_pack(read_pair_csv(str(csv_path)), aligner, [csv_path], cache)))
    assert aligner.stats["images"] == 6
    again = read_pack(str(cached_pack(read_pair_csv(str(csv_path)), aligner, [csv_path], cache)))
    assert aligner.stats["images"] == 6  # served from the cache, nothing aligned again
    assert (np.asarray(again.images) == np.asarray(first.images)).all()
    Image.new("RGB", (24, 24), (255, 0, 0)).save(tmp_path / "0.png")  # same name, new content
    changed = read_pack(str(cached_pack(read_pair_csv(str(csv_path)), aligner, [csv_path], cache)))
    assert aligner.stats["images"] == 12
    assert (changed.image(0)[..., 0] == 255).all()
    assert len(list((cache / "packs").iterdir())) == 2


def test_prepare_command_packs_an_insightface_bin(tmp_path, capsys):
    images = []
    for k in range(20):
        buffer = io.BytesIO()
        Image.new("RGB", (112, 112), (k * 10, 0, 0)).save(buffer, format="PNG")
        images.append(buffer.getvalue())
    (tmp_path / "agedb.bin").write_bytes(pickle.dumps((images, [True, False] * 5)))
    out = tmp_path / "agedb_30.pack"
    assert main(["prepare", "--bin", str(tmp_path / "agedb.bin"), "--out", str(out)]) == 0
    pack = read_pack(str(out))
    assert len(pack) == 10 and pack.images.shape == (20, 3, 112, 112)
    assert pack.image(3)[0, 0].tolist() == [30, 0, 0]
    assert "10 pairs, 20 distinct images" in capsys.readouterr().out
    assert main(["prepare", "--bin", str(tmp_path / "agedb.bin"), "--out", str(out)]) == 2


def test_alignment_in_worker_threads_keeps_the_order(tmp_path, caplog):
    from xcos.data.prepare import align_images

    write_csv_set(tmp_path, count=10)
    paths = [tmp_path / f"{k}.png" for k in range(10)]
    expected = np.stack([shrunk(p).transpose(2, 0, 1) for p in paths])
    with caplog.at_level("INFO", logger="xcos.data.prepare"):
        threaded = align_images(paths, CentreCropAligner(), batch_size=3, workers=3)
    np.testing.assert_array_equal(threaded, expected)
    np.testing.assert_array_equal(align_images(paths, CentreCropAligner(), 3, workers=1), expected)
    assert any(r.getMessage().startswith("align: 10 img in ") for r in caplog.records)


def test_cached_faces_are_streamed_into_an_entry_read_row_by_row(tmp_path):
    from xcos.data.npy_rows import NpyRows
    from xcos.data.prepare import cached_faces

    write_csv_set(tmp_path, count=7)
    paths = [tmp_path / f"{k}.png" for k in range(7)]
    faces, key = cached_faces(paths, CentreCropAligner(), tmp_path / "cache", batch_size=2)
    assert isinstance(faces, NpyRows) and faces.shape == (7, 3, 16, 16) and len(faces) == 7
    expected = np.stack([shrunk(p).transpose(2, 0, 1) for p in paths])
    np.testing.assert_array_equal(np.stack([faces[i] for i in range(7)]), expected)
    assert sorted(p.name for p in (tmp_path / "cache" / "faces").iterdir()) == [f"{key}.npy"]
    again, same_key = cached_faces(paths, CentreCropAligner(), tmp_path / "cache")
    assert same_key == key and np.array_equal(again[6], expected[6])


def test_npy_rows_read_what_numpy_wrote_and_refuse_what_is_not_rows(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from xcos.data.npy_rows import NpyRows
    from xcos.errors import DataError

    array = np.arange(5 * 2 * 3, dtype=np.float32).reshape(5, 2, 3)
    np.save(tmp_path / "a.npy", array)
    rows = NpyRows(tmp_path / "a.npy")
    assert rows.shape == (5, 2, 3) and rows.dtype == np.float32
    assert np.array_equal(rows[4], array[4]) and np.array_equal(rows[-1], array[4])
    with ThreadPoolExecutor(4) as pool:  # pread: no shared file position between threads
        read = list(pool.map(lambda i: rows[i % 5], range(200)))
    assert all(np.array_equal(r, array[i % 5]) for i, r in enumerate(read))
    assert np.array_equal(pickle.loads(pickle.dumps(rows))[2], array[2])
    with pytest.raises(IndexError, match="row 5 of 5"):
        rows[5]
    np.save(tmp_path / "f.npy", np.asfortranarray(array))
    np.save(tmp_path / "s.npy", np.float32(3.0))
    (tmp_path / "t.npy").write_bytes((tmp_path / "a.npy").read_bytes()[:-8])
    (tmp_path / "x.npy").write_bytes(b"not numpy")
    for name, message in [("f", "C-ordered"), ("s", "C-ordered"), ("t", "cut short")]:
        with pytest.raises(DataError, match=message):
            NpyRows(tmp_path / f"{name}.npy")
    with pytest.raises(DataError, match=r"not a \.npy array file"):
        NpyRows(tmp_path / "x.npy")


def test_prepare_streams_faces_through_a_scratch_file_it_removes(tmp_path, monkeypatch):
    from xcos.data import prepare

    (tmp_path / "set").mkdir()
    csv_path = write_csv_set(tmp_path / "set", count=10)
    pair_set = read_pair_csv(str(csv_path))
    # every face written as its chunk comes, never gathered into one array first
    monkeypatch.setattr(prepare, "align_images", lambda *a, **k: pytest.fail("gathered"))
    out = prepare_pack(pair_set, tmp_path / "packs" / "mine.pack", CentreCropAligner(), [], 3)
    expected = np.stack([shrunk(p).transpose(2, 0, 1) for p in pair_set.images])
    np.testing.assert_array_equal(read_pack(str(out)).images, expected)
    assert sorted(p.name for p in (tmp_path / "packs").iterdir()) == ["mine.pack"]

    class Failing(CentreCropAligner):
        def align_batch(self, paths):
            if any(str(p).endswith("7.png") for p in paths):
                raise RuntimeError("detector failed")
            return super().align_batch(paths)

    with pytest.raises(RuntimeError, match="detector failed"):
        prepare_pack(pair_set, tmp_path / "packs" / "other.pack", Failing(), [], 3)
    assert sorted(p.name for p in (tmp_path / "packs").iterdir()) == ["mine.pack"]
