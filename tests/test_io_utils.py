"""The shared atomic writers and manifest reader."""

from __future__ import annotations

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
