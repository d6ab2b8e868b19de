"""An asyncio micro-batcher: requests submitted while the model is busy, or within a few
milliseconds of each other, go through the model together in one call.

``await batcher.submit(item)`` returns that item's result. The batch function runs in one
worker thread, so the event loop keeps answering (health checks, uploads) while it works, and
batches run one after the other, never two at once on the same model.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from xcos.errors import ConfigError

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class _Pending:
    item: Any
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


class MicroBatcher(Generic[Item, Result]):
    """Runs ``batch_fn(items) -> results`` (one result per item, in order) on batches of up to
    ``max_batch`` items, each batch started at most ``max_wait_ms`` after its oldest item
    arrived (or as soon as it is full). ``max_batch=1``: no batching, no waiting.

    ``eager=True``: a batch waits only while items announced by ``incoming()`` are still being
    prepared (decoded), so that a lone request never waits ``max_wait_ms`` for nobody.

    The batcher binds to the running loop on its first ``submit``; ``close`` stops it.
    """

    def __init__(
        self,
        batch_fn: Callable[[list[Item]], Sequence[Result]],
        max_batch: int = 16,
        max_wait_ms: float = 5.0,
        eager: bool = False,
    ) -> None:
        if max_batch < 1:
            raise ConfigError(f"max_batch: expected a positive number, got {max_batch}")
        if max_wait_ms < 0:
            raise ConfigError(f"max_wait_ms: expected 0 or more, got {max_wait_ms}")
        self.batch_fn = batch_fn
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.eager = eager
        self._incoming = 0
        self._pending: list[_Pending] = []
        self._arrived: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._worker: ThreadPoolExecutor | None = None
        self._running: tuple[list[_Pending], asyncio.Future] | None = None

    async def submit(self, item: Item) -> Result:
        """``item``'s result, once its batch has run; the batch function's exception if that
        item failed."""
        self._start()
        future = self._loop.create_future()
        self._pending.append(_Pending(item, future))
        self._arrived.set()
        return await future

    @contextlib.contextmanager
    def incoming(self) -> Iterator[None]:
        """Around the work that prepares an item before its ``submit`` (decoding): with
        ``eager``, a batch waits for such work (up to ``max_wait_ms``), not for nothing."""
        self._incoming += 1
        try:
            yield
        finally:
            self._incoming -= 1

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._task is not None and not self._task.done():
            return
        # A new loop (a test client without its lifespan starts one per request): start over.
        self._loop, self._pending, self._arrived = loop, [], asyncio.Event()
        if self._worker is None:  # one thread: batches run one at a time, off the event loop
            self._worker = ThreadPoolExecutor(1, thread_name_prefix="xcos-batch")
        self._task = loop.create_task(self._run(), name="xcos-micro-batcher")

    async def _run(self) -> None:
        while True:
            await self._arrived.wait()
            await self._gather()
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            if not self._pending:
                self._arrived.clear()
            live = [entry for entry in batch if not entry.future.done()]  # skip cancelled
            if live:
                await self._run_batch(live)

    async def _gather(self) -> None:
        """Wait until the batch is full or its oldest item has waited ``max_wait`` (with
        ``eager``: or no more item is being prepared)."""
        while self._pending and len(self._pending) < self.max_batch:
            if self.eager and self._incoming == 0:
                return
            remaining = self._pending[0].arrived + self.max_wait - time.monotonic()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:  # an Event, not Queue.get: a timeout here can never lose an item
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    async def _run_batch(self, batch: list[_Pending]) -> None:
        running = self._loop.run_in_executor(self._worker, self._call, [e.item for e in batch])
        self._running = (batch, running)
        try:
            # Shielded: closing cancels the runner, never a batch its thread cannot drop.
            results = await asyncio.shield(running)
        except Exception as err:
            if len(batch) == 1:
                _deliver(batch[0].future, error=err)
                return
            # One bad item must not fail the others: run each alone so that every waiter
            # gets its own result or its own error.
            for entry in batch:
                await self._run_batch([entry])
            return
        finally:
            self._running = None
        _hand_out(batch, results)

    @staticmethod
    async def _finish(batch: list[_Pending], running: asyncio.Future) -> None:
        """Hand out the results of the batch that was running when ``close`` was called."""
        try:
            results = await running
        except Exception as err:
            for entry in batch:
                _deliver(entry.future, error=err)
            return
        _hand_out(batch, results)

    def _call(self, items: list[Item]) -> Sequence[Result]:
        results = self.batch_fn(items)
        if len(results) != len(items):
            raise RuntimeError(f"batch function gave {len(results)} results for {len(items)} items")
        return results

    async def close(self) -> None:
        """Stop taking batches: waiters still queued get a ``RuntimeError``; a batch already
        running finishes first."""
        running, self._running = self._running, None
        if self._task is not None:
            self._task.cancel()
            # RuntimeError: a task of another loop (a test client's, already closed)
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await self._task
        if running is not None and running[1].get_loop() is asyncio.get_running_loop():
            await self._finish(*running)
        for entry in self._pending:
            _deliver(entry.future, error=RuntimeError("the server is shutting down"))
        worker, self._pending, self._task, self._worker = self._worker, [], None, None
        if worker is not None:
            await asyncio.to_thread(worker.shutdown, wait=True)


def _hand_out(batch: list[_Pending], results: Sequence[Any]) -> None:
    for entry, result in zip(batch, results, strict=True):
        _deliver(entry.future, result=result)


def _deliver(future: asyncio.Future, result: Any = None, error: Exception | None = None) -> None:
    if future.done():  # the waiter was cancelled (client gone)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
