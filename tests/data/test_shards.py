"""Training shards: exact round trip, corruption caught at open, atomic writes, the data set."""

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from xcos.cli import main
from xcos.data import shards as shards_module
from xcos.data.image_folder import ImageFolderPairs, scan_image_folder
from xcos.data.images import read_face, read_rgb
from xcos.data.shards import ShardPairs, ShardStore, write_shards
from xcos.engine.trainer import Trainer
from xcos.errors import DataError, UnalignedImageError
from xcos.models.backbones import IResNet

SIZE = 64  # tiny_synth's image size
SHARD_SIZE = 5  # 32 images: six full shards and a partial one of 2


@pytest.fixture(scope="module")
def packed(tiny_synth, tmp_path_factory) -> Path:
    """Shards of tiny_synth/train, written once for the tests that only read them."""
    out = tmp_path_factory.mktemp("packed") / "train.shards"
    return write_shards(tiny_synth / "train", out, SIZE, SHARD_SIZE, num_workers=0)


@pytest.fixture
def copy_of_packed(packed, tmp_path) -> Path:
    """A private copy of ``packed`` for tests that damage it."""
    return Path(shutil.copytree(packed, tmp_path / "copy.shards"))


def identity_folder(root: Path, counts: dict[str, int], bad: dict[str, int] | None = None) -> Path:
    """Random 24x24 JPEG/PNG images per identity, plus ``bad`` undecodable files."""
    rng = np.random.default_rng(0)
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:02d}.{('png', 'jpg')[i % 2]}")
    for name, count in (bad or {}).items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            (root / name / f"bad{i}.jpg").write_bytes(b"not an image")
    return root


def test_round_trip_is_exact_across_shards(tiny_synth, packed):
    names, per_identity = scan_image_folder(tiny_synth / "train")
    paths = [path for files in per_identity for path in files]
    store = ShardStore(packed)
    manifest = json.loads((packed / "manifest.json").read_text())
    assert [s["images"] for s in manifest["shards"]] == [5, 5, 5, 5, 5, 5, 2]
    assert manifest["format"] == "xcos-shards" and manifest["version"] == 1
    assert manifest["images"] == len(store) == len(paths) == 32
    assert store.identity_names == names == sorted(names) and store.image_size == SIZE
    expected_labels = np.repeat(np.arange(len(names)), [len(f) for f in per_identity])
    assert store.labels.dtype == np.int64 and np.array_equal(store.labels, expected_labels)
    for index, path in enumerate(paths):
        assert np.array_equal(store[index].transpose(1, 2, 0), read_rgb(path)), path
    assert np.array_equal(store[-1], store[len(store) - 1])
    with pytest.raises(IndexError, match="image 32 is out of range for 32 images"):
        store[len(store)]


def test_parallel_decoding_keeps_order(tmp_path, monkeypatch):
    monkeypatch.setattr(shards_module, "DECODE_BATCH", 3)  # several batches per worker
    root = identity_folder(tmp_path / "faces", {"b": 5, "a": 4, "c": 3})
    out = write_shards(root, tmp_path / "x.shards", image_size=24, shard_size=4, num_workers=2)
    store = ShardStore(out)
    paths = sorted(root.glob("*/*"))
    assert store.identity_names == ["a", "b", "c"]
    assert [e["images"] for e in store.manifest["shards"]] == [4, 4, 4]
    for index, path in enumerate(paths):
        assert np.array_equal(store[index].transpose(1, 2, 0), read_rgb(path)), path


def test_faces_of_another_size_are_refused_not_resized(tmp_path):
    root = identity_folder(tmp_path / "faces", {"a": 2, "b": 2}, bad={"b": 1})
    with pytest.raises(UnalignedImageError, match=r"00\.png' is 24x24 pixels; expected .*16x16"):
        write_shards(root, tmp_path / "x.shards", 16, num_workers=0, skip_bad_images=True)
    assert not (tmp_path / "x.shards").exists()


def test_truncated_shard_names_file_and_sizes(copy_of_packed):
    shard = copy_of_packed / "shard-00003.npy"
    size = shard.stat().st_size
    os.truncate(shard, size - 100)
    with pytest.raises(DataError, match=rf"shard-00003\.npy: {size - 100} bytes on disk, "):
        ShardStore(copy_of_packed)


def test_shard_with_another_shape_is_refused_before_mapping(copy_of_packed):
    # the same byte count in another shape: only the header check can notice
    np.save(copy_of_packed / "shard-00001.npy", np.zeros((5, SIZE, SIZE, 3), np.uint8))
    with pytest.raises(DataError, match=r"shard-00001\.npy: the \.npy header says .*\[5, 64, 64"):
        ShardStore(copy_of_packed)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f: (f / "shard-00006.npy").unlink(), r"shard-00006\.npy: missing shard"),
        (lambda f: (f / "labels.npy").unlink(), r"labels\.npy: missing"),
        (
            lambda f: np.save(f / "labels.npy", np.zeros(31, np.int64)),
            r"labels\.npy: int64 shape \[31\], expected int64 \[32\]",
        ),
        (lambda f: edit_manifest(f, format="other"), r"manifest\.json: not a shards manifest"),
        (lambda f: edit_manifest(f, version=2), r"version 2 is not supported"),
        (lambda f: edit_manifest(f, images=33), r"hold 32 images in all, but 'images' says 33"),
        (lambda f: (f / "manifest.json").write_text("{"), r"manifest\.json: corrupt JSON"),
    ],
)
def test_damaged_folder_fails_with_a_clear_message(copy_of_packed, damage, message):
    damage(copy_of_packed)
    with pytest.raises(DataError, match=message):
        ShardStore(copy_of_packed)


def edit_manifest(folder: Path, **changes) -> None:
    path = folder / "manifest.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def test_existing_target_needs_overwrite(tiny_synth, packed, copy_of_packed):
    with pytest.raises(DataError, match="already exists; delete it or pass overwrite=True"):
        write_shards(tiny_synth / "train", packed, SIZE, num_workers=0)
    write_shards(tiny_synth / "train", copy_of_packed, SIZE, 100, num_workers=0, overwrite=True)
    assert len(ShardStore(copy_of_packed).manifest["shards"]) == 1


def test_interrupted_write_leaves_no_folder_keeps_the_old(tiny_synth, tmp_path, monkeypatch):
    calls = {"n": 0}

    def crash_on_the_twelfth(path, size, fix=""):
        calls["n"] += 1
        if calls["n"] == 12:
            raise KeyboardInterrupt("simulated Ctrl-C at image 12")
        return read_face(path, size, fix)

    monkeypatch.setattr(shards_module, "read_face", crash_on_the_twelfth)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt, match="simulated Ctrl-C at image 12"):
        write_shards(tiny_synth / "train", out / "t.shards", SIZE, SHARD_SIZE, num_workers=0)
    assert list(out.iterdir()) == []
    monkeypatch.undo()
    write_shards(tiny_synth / "train", out / "t.shards", SIZE, SHARD_SIZE, num_workers=0)
    monkeypatch.setattr(shards_module, "read_face", crash_on_the_twelfth)
    calls["n"] = 0
    with pytest.raises(KeyboardInterrupt, match="simulated Ctrl-C at image 12"):
        write_shards(tiny_synth / "train", out / "t.shards", SIZE, 3, 0, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["t.shards"]
    assert len(ShardStore(out / "t.shards").manifest["shards"]) == 7


def test_bad_image_is_named_or_skipped_and_counted(tmp_path):
    root = identity_folder(tmp_path / "faces", {"a": 3, "b": 2}, bad={"b": 1, "c": 1})
    with pytest.raises(DataError, match=r"b/bad0\.jpg.*--skip-bad-images"):
        write_shards(root, tmp_path / "x.shards", 24, num_workers=0)
    assert not (tmp_path / "x.shards").exists()
    store = ShardStore(write_shards(root, tmp_path / "x.shards", 24, 2, 0, skip_bad_images=True))
    assert store.manifest["skipped_images"] == 2
    assert store.manifest["skipped_files"] == ["b/bad0.jpg", "c/bad0.jpg"]
    assert store.identity_names == ["a", "b"] and list(store.labels) == [0, 0, 0, 1, 1]
    assert [e["images"] for e in store.manifest["shards"]] == [2, 2, 1]  # last one shrunk
    assert np.array_equal(store[4].transpose(1, 2, 0), read_rgb(root / "b" / "01.jpg"))


def shard_and_folder_pairs(tiny_synth, packed) -> tuple[ShardPairs, ImageFolderPairs]:
    shards = ShardPairs(str(packed), seed=7)
    folder = ImageFolderPairs(str(tiny_synth / "train"), image_size=SIZE, seed=7)
    return shards, folder


@pytest.mark.parametrize("epoch", [0, 3])
def test_items_equal_image_folder_pairs(tiny_synth, packed, epoch):
    shards, folder = shard_and_folder_pairs(tiny_synth, packed)
    assert shards.num_classes == folder.num_classes == 8 and len(shards) == len(folder)
    shards.set_epoch(epoch)
    folder.set_epoch(epoch)
    for index in range(len(shards)):
        ours, theirs = shards[index], folder[index]
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[key], theirs[key]) for key in ours), index


def test_image_size_must_match_the_stored_one(packed):
    assert ShardPairs(str(packed), image_size=SIZE).image_size == SIZE
    with pytest.raises(DataError, match=r"stores 64x64 faces; .*--size 112"):
        ShardPairs(str(packed), image_size=112)


def test_pickled_store_carries_no_pixels(packed):
    store = ShardStore(packed)
    _ = [store[i].sum() for i in range(len(store))]  # map every shard
    copy = pickle.loads(pickle.dumps(store))
    assert len(pickle.dumps(store)) < 10_000 and np.array_equal(copy[20], store[20])


@pytest.mark.parametrize("context", ["fork", pytest.param("spawn", marks=pytest.mark.slow)])
def test_data_loader_with_workers(packed, context):
    shards = ShardPairs(str(packed))
    shards.set_epoch(1)
    loader = DataLoader(shards, batch_size=8, num_workers=2, multiprocessing_context=context)
    batches = list(loader)
    images = torch.cat([batch["image_b"] for batch in batches])
    assert torch.equal(images, torch.stack([shards[i]["image_b"] for i in range(len(shards))]))


def test_cli_packs_and_reports_errors(tiny_synth, tmp_path, capsys):
    out = tmp_path / "cli.shards"
    args = ["pack", "--images", str(tiny_synth / "train"), "--out", str(out), "--size", "64"]
    assert main([*args, "--shard-size", "10", "--workers", "0"]) == 0
    assert f"{out}: 32 images, 8 identities, 4 shards, " in capsys.readouterr().out
    assert main(["pack", "--images", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "nowhere' does not exist" in capsys.readouterr().err


def test_training_on_shards_equals_training_on_their_image_folder(tiny_config, packed, tmp_path):
    """The shards hold tiny_synth/train's faces and pair them as ImageFolderPairs does, so the
    Trainer takes the same steps: equal weights and losses after two steps, not only a file."""
    shards = {"type": "shard_pairs", "root": str(packed), "seed": 0}  # tiny_config's seed
    steps = {"trainer": {"max_steps_per_epoch": 2}}
    runs = {"shards": [{"data": {"train": shards}}, steps], "folder": [steps]}
    for name, layers in runs.items():
        Trainer(tiny_config(*layers), tmp_path / name, torch.device("cpu")).fit()
    on_shards, on_folder = (
        torch.load(tmp_path / name / "checkpoints/last.pth", weights_only=True) for name in runs
    )
    assert on_shards["config"]["data"]["train"]["type"] == "shard_pairs"
    assert on_folder["config"]["data"]["train"]["type"] == "image_folder_pairs"
    assert (
        (on_shards["epoch"], on_shards["step"]) == (on_folder["epoch"], on_folder["step"]) == (1, 2)
    )
    weights, expected = on_shards["model"], on_folder["model"]
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[key], expected[key]) for key in expected), [
        key for key in expected if not torch.equal(weights[key], expected[key])
    ][:5]
    metrics = [(tmp_path / name / "metrics.csv").read_text() for name in runs]
    assert metrics[0] == metrics[1]  # the logged losses and validation scores, digit for digit


def test_frozen_backbone_on_shards_caches_its_outputs(tiny_config, packed, tmp_path, monkeypatch):
    """A frozen recognizer's outputs are cached per shards folder (the face-store interface)."""
    from tests.models.test_plugin import PLUGIN

    monkeypatch.setenv("XCOS_CACHE", str(tmp_path / "cache"))
    train = {"type": "shard_pairs", "root": str(packed), "seed": 0, "flip": True}
    layer = {**PLUGIN, "data": {"train": train}, "trainer": {"max_steps_per_epoch": 2}}
    # no validation pair set: the backbone then only ever sees the training faces
    layer["validation"] = {"pair_sets": [], "monitor": None}
    faces = []  # images through the backbone (an IR-SE IResNet), in any module of any model

    def count_faces(module, args, output):
        if isinstance(module, IResNet):
            faces.append(args[0].shape[0])

    handle = torch.nn.modules.module.register_module_forward_hook(count_faces)
    try:
        first = Trainer(tiny_config(layer), tmp_path / "run", torch.device("cpu"))
        computed = sum(faces)
        first.fit()
        cached = list((tmp_path / "cache" / "features").glob("*.pt"))
        assert len(cached) == 1  # the training faces' outputs, keyed by the shards' manifest
        faces.clear()
        again = Trainer(tiny_config(layer), tmp_path / "again", torch.device("cpu"))
        assert faces == []  # read back from the cache: not one face through the backbone
    finally:
        handle.remove()
    assert computed == 2 * len(ShardStore(packed))  # the first run did: each face, flipped
    assert list((tmp_path / "cache" / "features").glob("*.pt")) == cached  # reused
    assert len(again.dataset) == len(ShardStore(packed))
    torch.testing.assert_close(again.dataset.outputs, first.dataset.outputs, rtol=0, atol=0)
