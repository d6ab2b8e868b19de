"""Training pairs from InsightFace RecordIO folders: items, class order, sizes, decoding on the
device in batches (equal to the workers' decoding within JPEG decoder tolerance), the Trainer
with either decoding, and per-rank shares under torchrun."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import default_collate

from tests.conftest import REPO, require_shared
from tests.data.test_recordio import face_jpeg
from tests.helpers.recordio_writer import insightface_records, write_rec
from xcos.cli import main
from xcos.data.images import to_tensor
from xcos.data.rec_pairs import RecPairs, collate_encoded
from xcos.data.shards import ShardPairs, ShardStore
from xcos.engine.data_loaders import EpochSampler
from xcos.engine.trainer import Trainer
from xcos.errors import BadImageError, DataError, UnalignedImageError

CPU = torch.device("cpu")
DEVICES = [CPU] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
#: JPEG decoders may round differently (IDCT, chroma upsampling): at most this many levels
#: of 255 apart on any pixel, and much less on average.
LEVELS_MAX, LEVELS_MEAN = 3, 0.5


def pil_face(data: bytes, flip: bool) -> torch.Tensor:
    """An independent reference: PIL's decoding, flipped and normalised by ``to_tensor``."""
    with Image.open(io.BytesIO(data)) as image:
        rgb = np.asarray(image.convert("RGB"))
    return to_tensor(rgb[:, ::-1] if flip else rgb)


def assert_same_faces(actual: torch.Tensor, expected: torch.Tensor) -> None:
    levels = (actual.float().cpu() - expected.float()).abs() * 127.5
    assert levels.max() <= LEVELS_MAX and levels.mean() <= LEVELS_MEAN, (
        levels.max(),
        levels.mean(),
    )


def test_pairs_from_lfw40_carry_its_classes_and_faces():
    folder = require_shared("data/rec/lfw40")
    data = RecPairs(str(folder))
    assert (len(data), data.num_classes, data.image_size) == (298, 40, 112)
    assert all(data.file.label(data.key(i)) == data.labels[i] for i in range(len(data)))
    data.set_epoch(3)
    flips = 0
    for index in range(0, 298, 37):
        item = data[index]
        other, flip_a, flip_b = data.sample(index)
        flips += flip_a + flip_b
        assert int(item["identity_a"]) == data.labels[index]
        assert int(item["identity_b"]) == data.labels[other]
        assert int(item["label"]) == int(data.labels[index] == data.labels[other])
        assert_same_faces(item["image_a"], pil_face(data.file.payload(data.key(index)), flip_a))
        assert_same_faces(item["image_b"], pil_face(data.file.payload(data.key(other)), flip_b))
    assert 0 < flips < 16  # both flipped and unflipped faces were compared


def test_shuffled_set_is_numbered_class_by_class():
    folder = require_shared("data/rec/lfw20_shuffled")
    data = RecPairs(str(folder))
    with (folder / "labels.tsv").open(newline="") as handle:
        classes = {
            int(row["key"]): int(row["class"]) for row in csv.DictReader(handle, delimiter="\t")
        }
    assert [classes[data.key(i)] for i in range(len(data))] == sorted(classes.values())
    assert np.array_equal(data.labels, sorted(classes.values()))


def test_sizes_are_checked_never_resized(tmp_path):
    with pytest.raises(
        DataError, match=r"data\.train\.image_size: 96, but .*property says the faces are 112x112"
    ):
        RecPairs(str(require_shared("data/rec/lfw40")), image_size=96)
    # without property the first face sets the size; a face of another size is named
    faces = [[face_jpeg(1), face_jpeg(2)], [face_jpeg(3, size=24), face_jpeg(4)]]
    offsets = write_rec(tmp_path, insightface_records(faces))
    data = RecPairs(str(tmp_path))
    assert data.image_size == 16 and data.face(0).shape == (16, 16, 3)
    with pytest.raises(
        UnalignedImageError,
        match=rf"key 3 \(record at byte {offsets[3]}\): a 24x24 face, expected 16x16",
    ):
        data.face(2)


def two_views(folder, keys) -> tuple[dict, dict, RecPairs]:
    """The same items decoded by the workers' path and by ``decode_batch``'s."""
    workers, device = RecPairs(str(folder)), RecPairs(str(folder), decode="device")
    cpu_batch = default_collate([workers[key] for key in keys])
    encoded = collate_encoded([device[key] for key in keys])
    assert isinstance(encoded["encoded_a"], list) and "image_a" not in encoded
    return cpu_batch, encoded, device


@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_decoding_on_the_device_gives_the_workers_pixels(device):
    folder = require_shared("data/rec/lfw40")
    keys = [(2, index) for index in range(0, 298, 19)]
    cpu_batch, encoded, data = two_views(folder, keys)
    batch = data.decode_batch(encoded, device)
    assert set(batch) == set(cpu_batch)
    for name in ("image_a", "image_b"):
        assert batch[name].device.type == device.type and batch[name].shape == (16, 3, 112, 112)
        assert_same_faces(batch[name], cpu_batch[name])
    for name in ("identity_a", "identity_b", "label"):
        assert torch.equal(batch[name].cpu(), cpu_batch[name])
    # the flips really differ between faces: an unflipped batch would not match
    unflipped = data.decode_batch(
        collate_encoded([{**data[k], "flip_a": torch.tensor(False)} for k in keys]), device
    )
    assert (unflipped["image_a"].cpu() - cpu_batch["image_a"]).abs().amax() > 0.5


def test_decoding_on_the_device_names_a_bad_or_unaligned_face(tmp_path):
    png = io.BytesIO()
    Image.new("RGB", (16, 16)).save(png, "PNG")
    faces = [[face_jpeg(1), png.getvalue()], [face_jpeg(3), face_jpeg(4, size=24)]]
    offsets = write_rec(tmp_path, insightface_records(faces), "2,16,16")
    data = RecPairs(str(tmp_path), decode="device")
    with pytest.raises(
        BadImageError,
        match=rf"key 2 \(record at byte {offsets[2]}\): cannot decode its JPEG on cpu",
    ):
        data.decode_batch(collate_encoded([data[0], data[1]]), CPU)
    with pytest.raises(
        UnalignedImageError, match=rf"key 4 \(record at byte {offsets[4]}\): a 24x24 face"
    ):
        data.decode_batch(collate_encoded([data[2], data[3]]), CPU)


def test_trainer_decodes_on_its_device(tiny_config, tmp_path):
    """The Trainer collates encoded faces and decodes them before the model sees the batch
    (the workers' decoding runs in tests/engine/test_rec_training.py)."""
    train = {"type": "rec_pairs", "root": str(require_shared("data/rec/lfw40")), "decode": "device"}
    layer = {
        "data": {"train": train, "num_workers": 1},
        "model": {"backbone": {"input_size": 112}},
        "trainer": {"max_steps_per_epoch": 2},
        "validation": {"pair_sets": [], "monitor": None},
    }
    trainer = Trainer(tiny_config(layer), tmp_path / "run", CPU)
    assert trainer.model.identity_head.kernel.shape[1] == 40  # classes from property
    losses = trainer.train_epoch()
    assert trainer.step == 2 and np.isfinite(losses["loss"])


@pytest.mark.slow
def test_torchrun_ranks_read_disjoint_shares(tmp_path):
    """Two processes under torchrun, each with a DataLoader worker: together they read every
    anchor of the epoch once, in the shares the epoch sampler gives them, with the right bytes."""
    folder = require_shared("data/rec/lfw40")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO / 'src'}:{REPO}"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "tests.helpers.rec_ranks",
        str(folder),
        str(tmp_path),
    ]
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    shares = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    data = RecPairs(str(folder))
    sampler = EpochSampler(len(data), 0)
    sampler.set_epoch(1)
    order = [data.key(index) for _, index in sampler]
    assert [key for key, _ in shares[0]] == order[0::2] and [key for key, _ in shares[1]] == order[
        1::2
    ]
    with (folder / "labels.tsv").open(newline="") as handle:
        digests = {
            int(row["key"]): row["payload_sha256"] for row in csv.DictReader(handle, delimiter="\t")
        }
    assert all(digests[key] == digest for share in shares for key, digest in share)


# --- xcos pack of a RecordIO folder ---------------------------------------------------------


def test_pack_a_record_folder_gives_the_same_items(tmp_path, capsys):
    folder = require_shared("data/rec/lfw40")
    out = tmp_path / "lfw40.shards"
    args = ["pack", "--images", str(folder), "--out", str(out), "--shard-size", "100"]
    assert main([*args, "--workers", "1"]) == 0
    assert f"{out}: 298 images, 40 identities, 3 shards, " in capsys.readouterr().out
    shards, rec = ShardPairs(str(out)), RecPairs(str(folder))
    assert shards.identity_names == [str(c) for c in range(40)]
    assert np.array_equal(shards.labels, rec.labels)
    for key in [(1, 0), (1, 97), (2, 201), (2, 297)]:
        from_shards, from_rec = shards[key], rec[key]
        assert from_shards.keys() == from_rec.keys()
        assert all(torch.equal(from_shards[k], from_rec[k]) for k in from_rec)


def test_pack_names_and_skips_a_bad_record(tmp_path, capsys):
    faces = [[face_jpeg(1), face_jpeg(2)], [face_jpeg(3), b"\xff\xd8 not a jpeg"]]
    offsets = write_rec(tmp_path / "rec", insightface_records(faces), "2,16,16")
    args = ["pack", "--images", str(tmp_path / "rec"), "--out", str(tmp_path / "x.shards")]
    assert main([*args, "--size", "16", "--workers", "0"]) == 2
    assert (
        f"key 4 (record at byte {offsets[4]}): cannot decode its image" in capsys.readouterr().err
    )
    assert main([*args, "--size", "16", "--workers", "0", "--skip-bad-images"]) == 0
    store = ShardStore(tmp_path / "x.shards")
    assert len(store) == 3 and store.manifest["skipped_files"] == ["train.rec key 4"]
    assert main([*args, "--workers", "0", "--overwrite"]) == 2  # 16x16 faces, --size 112
    assert "key 1 (record at byte 0): a 16x16 face, the pack's --size is 112" in (
        capsys.readouterr().err
    )
