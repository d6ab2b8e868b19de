"""Rows of a ``.npy`` file read on demand, without mapping the file into memory.

A memory map of the aligned-face cache (13,233 LFW faces at 150 px: 893 MB) grows the
process's resident memory by every page it touches, so one pass over the faces (a frozen
backbone's outputs) would hold them all. Reading each row with ``os.pread`` leaves them in
the page cache, which the kernel shares and reclaims, and keeps the process's own memory to
the rows in use.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from xcos.errors import DataError

#: The public header readers of the .npy format versions numpy writes for plain arrays.
HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


class NpyRows:
    """Row ``i`` of a C-ordered ``.npy`` array [N, ...] as a fresh array; ``len``, ``shape``
    and ``dtype`` like the array's. Safe to share between threads (``pread`` has no file
    position) and to pickle (a copy reopens the file by its path)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with self.path.open("rb") as stream:
            try:
                read_header = HEADER_READERS.get(np.lib.format.read_magic(stream))
                if read_header is None:
                    raise ValueError("a .npy format version this reader does not know")
                shape, fortran, dtype = read_header(stream)
            except ValueError as err:
                raise DataError(f"{self.path}: not a .npy array file ({err})") from None
            self.offset = stream.tell()
        if fortran or dtype.hasobject or not shape:
            raise DataError(f"{self.path}: expected a C-ordered array of rows, got {shape}")
        self.shape, self.dtype = tuple(shape), dtype
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        expected = self.offset + self.row_bytes * shape[0]
        if self.path.stat().st_size < expected:
            raise DataError(
                f"{self.path}: cut short ({self.path.stat().st_size} bytes, {expected} expected)"
            )
        self._fd = os.open(self.path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int) -> np.ndarray:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"row {index} of {len(self)} in {self.path}")
        index %= len(self)
        data = os.pread(self._fd, self.row_bytes, self.offset + index * self.row_bytes)
        return np.frombuffer(data, self.dtype).reshape(self.shape[1:])

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None
