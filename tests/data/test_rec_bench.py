"""bench/rec_data_path.py's parts on a small set: the image folder it compares holds the same
faces in the same order, and its rounds and per-core counts add up."""

from __future__ import annotations

import importlib

import torch

from tests.conftest import REPO, require_shared
from xcos.data.image_folder import ImageFolderPairs
from xcos.data.rec_pairs import RecPairs


def test_image_folder_of_a_record_folder_gives_the_same_pairs(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    bench = importlib.import_module("rec_data_path")
    rec = RecPairs(str(require_shared("data/rec/lfw20_shuffled")))
    folder = ImageFolderPairs(str(bench.image_folder_of(rec, tmp_path)), image_size=112)
    assert len(folder) == len(rec) and folder.num_classes == rec.num_classes
    for key in [(1, 0), (1, 50), (2, 119)]:
        a, b = folder[key], rec[key]
        assert all(torch.equal(a[k], b[k]) for k in ("identity_a", "identity_b", "label"))
        # PIL (the folder) and OpenCV (the records) decode the same bytes within rounding
        assert (a["image_a"] - b["image_a"]).abs().max() * 127.5 <= 3
    sample = bench.keys(len(rec), 10, 0)
    assert bench.per_core(rec, sample)() == 20
    calls = []
    rates = bench.rounds({"a": lambda: calls.append("a") or 4, "b": lambda: (6, 2.0)}, 2)
    assert calls == ["a", "a", "a"] and rates["b"] == 3.0
