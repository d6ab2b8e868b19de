"""Timing helpers shared by the bench scripts: synchronised wall time and interleaved rounds.

The scripts compare variants side by side in one process; running them round by round in turn
(A, B, A, B, ...) spreads machine noise (other jobs, clock boost, thermal state) over every
variant alike, and the median of the rounds ignores the odd disturbed one.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work: CUDA calls return before the GPU has finished."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(work: Callable[[], object], device: torch.device) -> float:
    """Seconds that ``work()`` takes, including the device work it queued."""
    sync(device)
    start = time.perf_counter()
    work()
    sync(device)
    return time.perf_counter() - start


def interleave(
    works: Mapping[str, Callable[[], object]],
    device: torch.device,
    rounds: int,
    warmup: int = 1,
) -> dict[str, list[float]]:
    """Seconds of each work per round, the works run in turn every round (reversed order in
    odd rounds).

    ``warmup`` untimed rounds come first: the first calls pay for allocator growth, cuDNN
    algorithm choice and (with ``torch.compile``) compilation.
    """
    for _ in range(warmup):
        for work in works.values():
            timed(work, device)
    times: dict[str, list[float]] = {name: [] for name in works}
    names = list(works)
    for round_number in range(rounds):
        # A, B in even rounds, B, A in odd ones: a work never always runs first (or right
        # after the same neighbour), so order effects such as caches or allocator state
        # left by the previous work do not favour one of them
        for name in names if round_number % 2 == 0 else names[::-1]:
            times[name].append(timed(works[name], device))
    return times


def median(values: list[float]) -> float:
    """Median of the rounds (the scripts report medians, never means)."""
    return statistics.median(values)
