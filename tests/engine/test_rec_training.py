"""The flagship config on a RecordIO folder as downloaded: one epoch of
``python main.py -tc configs/xcos_train_config.json`` (small backbones via ``-sc``) on the
shared ``lfw40`` set, validating on ``.bin`` files, then ``--mode test`` on its best.pth."""

from __future__ import annotations

import csv
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, require_shared
from xcos.data.recordio import RecordFile
from xcos.registry import BACKBONES

CONFIG = REPO / "configs" / "xcos_train_config.json"
SMALL = {"type": "ir_se", "depth": 10, "width": 0.25}
BINS = {"lfw": range(0, 20), "cfp_fp": range(20, 40), "agedb_30": range(10, 30)}


def write_bin(path: Path, file: RecordFile, classes: range) -> None:
    """An InsightFace ``.bin`` (pickled encoded images and issame flags) from the set's own
    JPEGs: per class, a pair of two of its faces and a pair with the next class's face."""
    first = {}
    for key, label in zip(file.keys.tolist(), file.labels.tolist(), strict=True):
        first.setdefault(label, []).append(key)
    images, issame = [], []
    for c in classes:
        other = classes[0] if c == classes[-1] else c + 1
        for a, b, same in ((first[c][0], first[c][1], True), (first[c][2], first[other][0], False)):
            images += [file.payload(a), file.payload(b)]
            issame.append(same)
    path.write_bytes(pickle.dumps((images, issame), protocol=2))


def downloaded_folder(root: Path) -> None:
    """``root/data/faces_emore`` laid out as InsightFace's download, and a small target."""
    source = require_shared("data/rec/lfw40")
    folder = root / "data" / "faces_emore"
    folder.mkdir(parents=True)
    for name in ("train.rec", "train.idx", "property"):
        (folder / name).symlink_to(source / name)
    file = RecordFile(source)
    for name, classes in BINS.items():
        write_bin(folder / f"{name}.bin", file, classes)
    target = BACKBONES.build({**SMALL, "embedding_dim": 64}, "target")
    (root / "pretrained_model").mkdir()
    torch.save(target.state_dict(), root / "pretrained_model" / "ir_se50_target.pth")
    small = {
        "model": {"backbone": SMALL, "target": {"backbone": {**SMALL, "embedding_dim": 64}}},
        "data": {"batch_size": 32, "num_workers": 1},
        "trainer": {"epochs": 1, "progress_bar": False, "tensorboard": False},
        "test": {"figures": 1},
    }
    (root / "small.json").write_text(json.dumps(small))


def main_py(root: Path, *args: str) -> subprocess.CompletedProcess:
    # one thread: two threads fighting other jobs on a small machine made the epoch 4x slower
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(REPO / "main.py"), "-tc", str(CONFIG), "-sc", "small.json"]
    return subprocess.run(
        [*command, *args, "--device", "cpu"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_flagship_config_trains_an_epoch_on_the_downloaded_folder_then_tests(tmp_path):
    downloaded_folder(tmp_path)
    done = main_py(tmp_path, "--out", "run")
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "run"
    saved = json.loads((run / "config.json").read_text())
    assert saved["data"]["train"]["type"] == "rec_pairs"
    assert saved["data"]["train"]["root"] == "data/faces_emore"
    state = torch.load(run / "checkpoints" / "best.pth", weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 298 // 32)  # the whole epoch, every batch
    assert state["model"]["identity_head.kernel"].shape[1] == 40  # classes from property
    with (run / "metrics.csv").open(newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    for name in BINS:
        assert 0.0 <= float(row[f"{name}/xcos/accuracy"]) <= 1.0, name
    done = main_py(tmp_path, "--mode", "test", "-p", "run/checkpoints/best.pth", "--out", "test")
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "test" / "metrics.json").read_text())
    assert set(metrics) == set(BINS) and set(metrics["lfw"]) == {"xcos", "cos"}
