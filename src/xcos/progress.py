"""Progress of long steps: a bar on a terminal, and one summary line with the rate when done.

The bar appears only when stderr is a terminal (tqdm's ``disable=None``), so logs and
redirected output stay quiet; the summary goes to the ``logging`` logger of the caller, so a
run's log says how long each step took and at what rate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm

__all__ = ["Progress", "progress"]


class Progress:
    """Counts what is done (a disabled tqdm bar does not) and moves the bar, if any."""

    def __init__(self, bar: tqdm) -> None:
        self.bar = bar
        self.done = 0

    def update(self, count: int = 1) -> None:
        self.done += count
        self.bar.update(count)


@contextmanager
def progress(total: int, description: str, unit: str, log: logging.Logger) -> Iterator[Progress]:
    """A bar of ``total`` ``unit``s; on a normal exit, logs ``"<description>: N units in T s
    (R units/s)"`` at INFO level (R to three significant digits)."""
    start = time.perf_counter()
    with tqdm(total=total, desc=description, unit=unit, disable=None, leave=False) as bar:
        counter = Progress(bar)
        yield counter
    seconds = time.perf_counter() - start
    rate = counter.done / seconds if seconds > 0 else float("inf")
    log.info(
        "%s: %d %s in %.1f s (%.3g %s/s)", description, counter.done, unit, seconds, rate, unit
    )
