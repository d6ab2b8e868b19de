"""Device selection, mixed precision and seeding."""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import numpy as np
import torch

from xcos.errors import ConfigError, SetupError


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SetupError(
            f"--device {name}: no CUDA GPU is available here (torch {torch.__version__}, "
            f"CUDA build: {torch.version.cuda or 'no'}); use --device cpu or --device auto"
        )
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise ConfigError(f"--device {name!r}: expected auto, cpu or cuda")
    return torch.device(name)


def autocast_factory(amp: str, device: torch.device) -> Callable[[], AbstractContextManager]:
    """A function returning the autocast context for ``amp`` in none | bf16 | fp16."""
    if amp == "none":
        return contextlib.nullcontext
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("trainer.amp = fp16 needs a CUDA device; use bf16 on CPU")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch; with ``deterministic``, ask torch for reproducible kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def rng_states() -> dict:
    """RNG states as tensors and plain values (loadable with ``weights_only=True``)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    numpy_state = states["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python_state = states["python"]
    random.setstate(
        (python_state["version"], tuple(python_state["internal"]), python_state["gauss"])
    )
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """PyTorch's intra-op thread count set to ``count`` inside the block (None: unchanged),
    restored after; the setting is process-wide, so use it around work that owns the process."""
    if count is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def release_free_memory() -> None:
    """Hand the C heap's free memory back to the system (glibc's ``malloc_trim``; elsewhere
    nothing), e.g. after a step whose threads allocated and freed large buffers in turn."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def steady_heap() -> None:
    """Fixed heap thresholds for a process's steady work (``STEADY_MMAP_THRESHOLD``,
    ``STEADY_TRIM_THRESHOLD``; glibc only): freed blocks of up to 32 MB are reused and the
    heap keeps up to 64 MB free. glibc's sliding defaults trim the heap's top once more than
    twice the largest freed block is free, which a training step's activations, freed at its
    end, exceed every step: the next step's pages are mapped and zeroed again. One head of
    the LFW protocol took 2.3 million page faults and 6 s of system time in 50 s that way;
    with these thresholds 0.17 million, 1.2 s, and about 15% less wall time
    (doc/performance.md). Setting them is idempotent."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, STEADY_MMAP_THRESHOLD)
        libc.mallopt(M_TRIM_THRESHOLD, STEADY_TRIM_THRESHOLD)


@contextlib.contextmanager
def freed_memory_reused() -> Iterator[None]:
    """Within: the C heap keeps and reuses freed blocks of up to 256 MB (glibc's ``mallopt``;
    elsewhere nothing). By default glibc maps each large block afresh and unmaps it when
    freed, and the kernel zeroes every page again: MTCNN's per-batch buffers made that 40%
    of alignment's CPU time, as system time. On leaving: the steady thresholds
    (``steady_heap``) and the free memory handed back, so that the blocks kept for the step
    do not stay with the process and hold the later stages' memory up (doc/performance.md)."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, 256 << 20)
        libc.mallopt(M_TRIM_THRESHOLD, 512 << 20)
    try:
        yield
    finally:
        steady_heap()
        release_free_memory()


#: glibc's ``mallopt`` parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: Steady work (``steady_heap``, and after a ``freed_memory_reused`` step): blocks over 32 MB
#: mapped on their own (the most glibc's own sliding threshold reaches), the heap trimmed
#: above 64 MB free. glibc's defaults (128 kB) would map and zero every activation of a
#: backbone pass afresh: a dlib pass over LFW's faces took 2.5x longer.
STEADY_MMAP_THRESHOLD, STEADY_TRIM_THRESHOLD = 32 << 20, 64 << 20
