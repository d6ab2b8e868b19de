"""glibc's heap settings around a step that allocates large buffers in threads."""

from __future__ import annotations

import pytest

from xcos import runtime


class FakeLibc:
    """Records ``mallopt`` / ``malloc_trim`` calls instead of changing the process's heap."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def mallopt(self, parameter: int, value: int) -> int:
        self.calls.append(("mallopt", parameter, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("malloc_trim", pad))
        return 1


def test_freed_memory_is_reused_within_and_handed_back_after(monkeypatch) -> None:
    libc = FakeLibc()
    monkeypatch.setattr(runtime, "_glibc", lambda: libc)
    with runtime.freed_memory_reused():
        inside = list(libc.calls)
    assert inside == [
        ("mallopt", runtime.M_MMAP_THRESHOLD, 256 << 20),
        ("mallopt", runtime.M_TRIM_THRESHOLD, 512 << 20),
    ]
    # after the step glibc's defaults hold again (the kept blocks must not hold the later
    # stages' memory up), then the free memory goes back to the system
    assert libc.calls[len(inside) :] == [
        ("mallopt", runtime.M_MMAP_THRESHOLD, 32 << 20),
        ("mallopt", runtime.M_TRIM_THRESHOLD, 64 << 20),
        ("malloc_trim", 0),
    ]


def test_settings_are_restored_when_the_step_fails(monkeypatch) -> None:
    libc = FakeLibc()
    monkeypatch.setattr(runtime, "_glibc", lambda: libc)
    with pytest.raises(RuntimeError), runtime.freed_memory_reused():
        raise RuntimeError("alignment failed")
    assert libc.calls[-3:] == [
        ("mallopt", runtime.M_MMAP_THRESHOLD, 32 << 20),
        ("mallopt", runtime.M_TRIM_THRESHOLD, 64 << 20),
        ("malloc_trim", 0),
    ]


def test_without_glibc_nothing_is_called(monkeypatch) -> None:
    monkeypatch.setattr(runtime, "_glibc", lambda: None)
    with runtime.freed_memory_reused():
        pass
    runtime.release_free_memory()


def test_steady_heap_sets_fixed_thresholds(monkeypatch) -> None:
    libc = FakeLibc()
    monkeypatch.setattr(runtime, "_glibc", lambda: libc)
    runtime.steady_heap()
    # explicit values: glibc's sliding thresholds would trim and re-fault a step's buffers
    assert libc.calls == [
        ("mallopt", runtime.M_MMAP_THRESHOLD, 32 << 20),
        ("mallopt", runtime.M_TRIM_THRESHOLD, 64 << 20),
    ]
