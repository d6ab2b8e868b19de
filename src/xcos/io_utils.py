"""The one way xcos writes files and folders atomically, reads a folder's manifest.json, and
digests a file.

A crash at any point leaves either the previous file (or folder) or the new one, never a
partial one: the data go to a hidden temporary sibling (same folder, so the same filesystem),
are fsynced, and are renamed into place. Checkpoints and the feature and effect caches
(through ``xcos.checkpoints``), packs, shards and SynthFaces sets all go through here. This
module lives outside ``xcos.engine`` so that models, importers and data code need not import
the training engine, and it never imports torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, BinaryIO

from xcos.errors import DataError

__all__ = [
    "atomic_folder",
    "atomic_save_json",
    "atomic_write",
    "file_sha256",
    "fsync_file",
    "move_into_place",
    "read_manifest",
    "write_synced",
]


@contextmanager
def atomic_write(
    path: str | Path, mode: str = "wb", newline: str | None = None
) -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing (``newline`` as ``open`` takes it:
    ``""`` for the csv module); on a clean exit it is fsynced and renamed to ``path``, on an
    exception it is deleted and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(handle, mode, encoding=encoding, newline=newline) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_save_json(obj: Any, path: str | Path, **dumps: Any) -> None:
    """``obj`` as JSON text (``json.dumps(obj, **dumps)`` plus a newline), atomically: how
    run outputs (``metrics.json``, ``results.json``, config copies) are written, so that a
    crash or a full disk leaves the previous file whole."""
    text = json.dumps(obj, **dumps) + "\n"  # an object JSON cannot hold fails before any write
    with atomic_write(path, "w") as stream:
        stream.write(text)


def write_synced(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write a member of a folder being built by ``atomic_folder``, fsynced before the rename
    so that a crash cannot leave a renamed folder with unwritten data."""
    with path.open("wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())


def fsync_file(path: Path) -> None:
    """fsync a file written by other means (before its folder is renamed into place)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_dir(folder: Path) -> None:
    """fsync a folder (so a rename in it is durable); silently skipped where unsupported."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_folder(target: str | Path) -> Iterator[Path]:
    """Build a folder in a hidden temporary sibling of ``target`` (yielded); on a clean exit
    it replaces ``target`` (see ``move_into_place``), on an exception it is deleted."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield temp
        move_into_place(temp, target)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def move_into_place(temp: Path, target: Path) -> None:
    """Rename ``temp`` to ``target``; an existing ``target`` is swapped out, then deleted."""
    if not target.exists():
        temp.rename(target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    old.rmdir()  # only the unique name is wanted; rename needs it free
    target.rename(old)
    try:
        temp.rename(target)
    except BaseException:
        old.rename(target)  # put the previous folder back
        raise
    shutil.rmtree(old, ignore_errors=True)


def read_manifest(path: str | Path, missing: str, corrupt: str) -> Any:
    """The parsed JSON at ``path`` (a ``manifest.json``); a missing, unreadable or malformed
    file raises ``DataError`` "<path>: <missing>" or "<path>: corrupt JSON (...); <corrupt>".

    ``missing`` and ``corrupt`` say what to do about it (they differ per folder format);
    checks of the content (format, version, fields) stay with each format's reader.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {missing}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: corrupt JSON ({err}); {corrupt}") from None
    except OSError as err:
        raise DataError(f"{path}: cannot be read: {err.strerror or err}") from None


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
