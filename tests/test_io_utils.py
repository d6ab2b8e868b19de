"""The shared atomic writers and manifest reader."""

from __future__ import annotations

import json
import os

import pytest

from xcos.errors import DataError
from xcos.io_utils import atomic_folder, atomic_save_json, atomic_write, read_manifest


def test_atomic_write_leaves_the_old_file_and_no_temporary_on_error(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    with atomic_write(path, "w") as stream:
        stream.write("old")
    with pytest.raises(RuntimeError), atomic_write(path, "w") as stream:
        stream.write("partial")
        raise RuntimeError("crash")
    assert path.read_text() == "old"
    assert [p.name for p in path.parent.iterdir()] == ["a.txt"]


def test_atomic_folder_replaces_or_keeps_the_target(tmp_path):
    target = tmp_path / "set"
    with atomic_folder(target) as temp:
        (temp / "x").write_text("1")
    with pytest.raises(RuntimeError), atomic_folder(target) as temp:
        (temp / "x").write_text("2")
        raise RuntimeError("crash")
    assert (target / "x").read_text() == "1"
    with atomic_folder(target) as temp:
        (temp / "y").write_text("3")
    assert [p.name for p in target.iterdir()] == ["y"]
    assert [p.name for p in tmp_path.iterdir()] == ["set"]


def test_read_manifest_names_the_file(tmp_path):
    path = tmp_path / "manifest.json"
    with pytest.raises(DataError, match=r"manifest\.json: missing; make one"):
        read_manifest(path, "missing; make one", "rewrite it")
    path.write_text("{not json")
    with pytest.raises(DataError, match=r"manifest\.json: corrupt JSON .*; rewrite it"):
        read_manifest(path, "missing; make one", "rewrite it")
    atomic_save_json({"format": "x"}, path)
    assert read_manifest(path, "", "") == {"format": "x"}


def test_a_failed_json_write_leaves_the_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    atomic_save_json({"accuracy": 0.9}, path, indent=2)
    assert path.read_text() == '{\n  "accuracy": 0.9\n}\n'
    with pytest.raises(TypeError):
        atomic_save_json({"accuracy": object()}, path)

    def full_disk(descriptor):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)  # the data are written, the rename never comes
    with pytest.raises(OSError, match="No space left"):
        atomic_save_json({"accuracy": 0.1}, path, indent=2)
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"accuracy": 0.9}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_atomic_write_translates_newlines_as_open_does(tmp_path):
    with atomic_write(tmp_path / "a.txt", "w", newline="\r\n") as stream:
        stream.write("a\nb\n")
    assert (tmp_path / "a.txt").read_bytes() == b"a\r\nb\r\n"
