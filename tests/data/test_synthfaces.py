"""Tests for the SynthFaces generator (small sets, so the whole file runs in a few seconds)."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xcos.cli import main
from xcos.data.synthfaces import (
    GENERATOR_VERSION,
    REGIONS,
    ensure_synthfaces,
    generate_synthfaces,
    render_face,
    sample_identity,
    sample_variation,
    swap_region,
)
from xcos.errors import DataError

SMALL = {
    "identities": {"train": 4, "val": 6, "test": 6},
    "images_per_identity": 3,
    "pairs_per_split": 20,
    "one_region_pairs": 20,
    "seed": 0,
}
PAIR_HEADER = ["path_a", "path_b", "label", "fold"]
ONE_REGION_HEADER = [*PAIR_HEADER, "region", "x0", "y0", "x1", "y1"]


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synth") / "set"
    return root, generate_synthfaces(root, **SMALL)


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_render_face_is_pure_and_shaped() -> None:
    identity = sample_identity(np.random.default_rng(1))
    variation = sample_variation(np.random.default_rng(2))
    img = render_face(identity, variation)
    assert img.shape == (112, 112, 3) and img.dtype == np.uint8
    assert np.array_equal(img, render_face(identity, variation))
    as_dicts = render_face(dataclasses.asdict(identity), dataclasses.asdict(variation))
    assert np.array_equal(img, as_dicts)
    assert render_face(identity, variation, size=64).shape == (64, 64, 3)


def test_swap_region_changes_only_that_region() -> None:
    p, q = (sample_identity(np.random.default_rng(s)) for s in (3, 4))
    for region in REGIONS:
        swapped = swap_region(p, q, region)
        assert getattr(swapped, region) == getattr(q, region)
        assert all(getattr(swapped, r) == getattr(p, r) for r in REGIONS if r != region)
    with pytest.raises(ValueError, match="region"):
        swap_region(p, q, "hair")


def test_layout(small_set: tuple[Path, dict]) -> None:
    root, manifest = small_set
    for split, n_ids in SMALL["identities"].items():
        folders = sorted((root / split).iterdir())
        assert len(folders) == n_ids
        for folder in folders:
            assert folder.name.startswith("id_") and len(folder.name) == 8
            assert sorted(p.name for p in folder.iterdir()) == ["0000.png", "0001.png", "0002.png"]
    img = Image.open(root / "train" / "id_00000" / "0000.png")
    assert img.mode == "RGB" and img.size == (112, 112)
    assert not (root / "synth_train.csv").exists()
    assert manifest == json.loads((root / "manifest.json").read_text())
    assert manifest["version"] == GENERATOR_VERSION
    assert manifest["params"]["identities"] == SMALL["identities"]
    n_png = sum(1 for _ in root.rglob("*.png"))
    assert manifest["files"]["png"] == n_png == 16 * 3 + 2 * 2 * 20
    assert manifest["counts"] == {
        "identities": 16,
        "images": 48,
        "pairs": 40,
        "one_region_pairs": 40,
        "png_files": n_png,
        "csv_files": 4,
    }
    assert manifest["splits"]["test"]["pairs_csv"] == "synth_test.csv"
    assert [p.name for p in root.parent.iterdir()] == ["set"]  # no temporary dirs left behind


def test_identities_disjoint_across_splits(small_set: tuple[Path, dict]) -> None:
    root, _ = small_set
    names = [f.name for split in SMALL["identities"] for f in (root / split).iterdir()]
    assert len(names) == len(set(names))
    firsts = [
        (root / split / name / "0000.png")
        for split in SMALL["identities"]
        for name in (f.name for f in (root / split).iterdir())
    ]
    assert len({p.read_bytes() for p in firsts}) == len(firsts)


@pytest.mark.parametrize("split", ["val", "test"])
def test_pair_csv(small_set: tuple[Path, dict], split: str) -> None:
    root, _ = small_set
    header, rows = read_csv(root / f"synth_{split}.csv")
    assert header == PAIR_HEADER
    assert len(rows) == SMALL["pairs_per_split"]
    half = len(rows) // 20
    for i, row in enumerate(rows):  # 10 contiguous folds, each: same pairs, then different
        assert int(row["fold"]) == i // (2 * half)
        assert int(row["label"]) == int(i % (2 * half) < half)
        a, b = (Path(row[k]) for k in ("path_a", "path_b"))
        assert (root / a).is_file() and (root / b).is_file() and a != b
        assert a.parts[0] == b.parts[0] == split
        assert int(row["label"]) == int(a.parent == b.parent)
    pairs = {frozenset((r["path_a"], r["path_b"])) for r in rows}
    assert len(pairs) == len(rows)


@pytest.mark.parametrize("split", ["val", "test"])
def test_one_region_pairs(small_set: tuple[Path, dict], split: str) -> None:
    root, _ = small_set
    header, rows = read_csv(root / f"synth_{split}_one_region.csv")
    assert header == ONE_REGION_HEADER
    assert len(rows) == SMALL["one_region_pairs"]
    for i, row in enumerate(rows):
        assert row["region"] == REGIONS[i % len(REGIONS)]
        assert int(row["label"]) == 0
        assert int(row["fold"]) == i * 10 // len(rows)
        assert Path(row["path_a"]).parent.name == f"{split}_one_region"
        a, b = load(root / row["path_a"]), load(root / row["path_b"])
        x0, y0, x1, y1 = (int(row[k]) for k in ("x0", "y0", "x1", "y1"))
        assert 0 <= x0 < x1 <= 112 and 0 <= y0 < y1 <= 112
        diff = np.any(a != b, axis=2)
        inside = np.zeros_like(diff)
        inside[y0:y1, x0:x1] = True
        assert not diff[~inside].any()  # A and B agree outside the box ...
        ys, xs = np.nonzero(diff)  # ... and the box is tight around what differs
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)
        centre_y = (y0 + y1) / 2  # aligned-crop layout: eyes near y=52, mouth near y=92
        if row["region"] == "eyes":
            assert 40 <= centre_y <= 64
        if row["region"] == "mouth":
            assert 80 <= centre_y <= 104


def test_deterministic(tmp_path: Path, small_set: tuple[Path, dict]) -> None:
    root, _ = small_set
    again = tmp_path / "again"
    generate_synthfaces(again, **SMALL)
    assert files(again) == files(root)
    other = tmp_path / "other"
    generate_synthfaces(other, **{**SMALL, "seed": 1})
    a, b = files(root), files(other)
    assert a.keys() == b.keys()
    assert a["train/id_00000/0000.png"] != b["train/id_00000/0000.png"]
    assert a["synth_test.csv"] != b["synth_test.csv"]


def test_ensure_reuses_and_regenerates(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "set"
    first = ensure_synthfaces(root, **SMALL)
    stamp = (root / "manifest.json").stat().st_mtime_ns
    image = root / "val" / "id_00004" / "0000.png"
    image_stamp, image_bytes = image.stat().st_mtime_ns, image.read_bytes()
    assert ensure_synthfaces(root, **SMALL) == first
    assert (root / "manifest.json").stat().st_mtime_ns == stamp
    assert image.stat().st_mtime_ns == image_stamp
    changed = ensure_synthfaces(root, **{**SMALL, "seed": 5})
    assert changed["params"]["seed"] == 5
    assert json.loads((root / "manifest.json").read_text()) == changed
    assert image.read_bytes() != image_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]
    assert capsys.readouterr() == ("", "")  # logging only, no prints


def test_split_order_matters(tmp_path: Path, small_set: tuple[Path, dict]) -> None:
    _, manifest = small_set
    reordered = {**SMALL, "identities": dict(reversed(SMALL["identities"].items()))}
    assert manifest["params"]["split_order"] == ["train", "val", "test"]
    copy = tmp_path / "set"
    ensure_synthfaces(copy, **SMALL)
    changed = ensure_synthfaces(copy, **reordered)  # identities are numbered in split order
    assert changed["params"]["split_order"] == ["test", "val", "train"]
    assert (copy / "test" / "id_00000").is_dir()


def test_ensure_regenerates_on_version_change(tmp_path: Path) -> None:
    root = tmp_path / "set"
    ensure_synthfaces(root, **SMALL)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["version"] = GENERATOR_VERSION - 1
    (root / "manifest.json").write_text(json.dumps(manifest))
    assert ensure_synthfaces(root, **SMALL)["version"] == GENERATOR_VERSION


def test_refuses_to_replace_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="is not a SynthFaces set; refusing to replace it"):
        generate_synthfaces(tmp_path, **SMALL)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_the_cli_refuses_a_foreign_directory_in_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    assert main(["synth", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path}: exists, is not empty and is not a SynthFaces set")
    assert "xcos synth --out" in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_custom_split_names(tmp_path: Path) -> None:
    manifest = generate_synthfaces(
        tmp_path / "set",
        identities={"holdout": 4},
        images_per_identity=3,
        pairs_per_split=20,
        one_region_pairs=0,
    )
    assert (tmp_path / "set" / "synth_holdout.csv").is_file()
    assert not (tmp_path / "set" / "synth_holdout_one_region.csv").exists()
    assert manifest["splits"]["holdout"]["identities"] == 4


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"pairs_per_split": 30}, "pairs_per_split must be a positive multiple of 20.*got 30"),
        ({"pairs_per_split": 0}, "pairs_per_split must be a positive multiple of 20.*got 0"),
        ({"identities": {"train": 4, "test": 1}}, "split 'test' needs at least 2 identities"),
        ({"identities": {}}, "identities must name at least one split"),
        ({"identities": {"a/b": 4}}, "bad split name 'a/b'"),
        ({"images_per_identity": 1}, "images_per_identity must be >= 2, got 1"),
        ({"one_region_pairs": 15}, r"one_region_pairs must be a multiple of 10 .*got 15"),
        # 6 ids x 3 pairs each: only 18 distinct same pairs, 20 needed
        ({"pairs_per_split": 40}, "split 'val' has only 18 distinct same-identity pairs"),
        ({"image_size": 8}, "image_size must be >= 32, got 8"),
        ({"seed": -1}, "seed must be >= 0, got -1"),
    ],
)
def test_bad_arguments(tmp_path: Path, bad: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate_synthfaces(tmp_path / "set", **{**SMALL, **bad})
    with pytest.raises(ValueError, match=message):
        ensure_synthfaces(tmp_path / "set", **{**SMALL, **bad})
    assert not any(tmp_path.iterdir())
