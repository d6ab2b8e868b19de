"""The server's micro-batcher: batches form, results and errors reach the right waiters, the
event loop stays free, and it shuts down cleanly."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from xcos.errors import ConfigError
from xcos.serve.batcher import MicroBatcher


def run(coroutine):
    return asyncio.run(coroutine)


def test_concurrent_items_share_a_batch_and_get_their_own_results():
    batches: list[list[int]] = []

    def double(items: list[int]) -> list[int]:
        batches.append(list(items))
        return [2 * item for item in items]

    async def scenario() -> list[int]:
        batcher = MicroBatcher(double, max_batch=4, max_wait_ms=50)
        try:
            return await asyncio.gather(*(batcher.submit(i) for i in range(10)))
        finally:
            await batcher.close()

    assert run(scenario()) == [2 * i for i in range(10)]
    assert [len(batch) for batch in batches] == [4, 4, 2]
    assert sorted(i for batch in batches for i in batch) == list(range(10))


def test_max_batch_1_runs_each_item_alone_without_waiting():
    sizes: list[int] = []

    def identity(items):
        sizes.append(len(items))
        return items

    async def scenario():
        batcher = MicroBatcher(identity, max_batch=1, max_wait_ms=1000)
        start = time.perf_counter()
        results = await asyncio.gather(*(batcher.submit(i) for i in range(5)))
        await batcher.close()
        return results, time.perf_counter() - start

    results, seconds = run(scenario())
    assert results == list(range(5)) and sizes == [1] * 5 and seconds < 0.5


def test_an_error_reaches_only_the_waiter_whose_item_failed():
    def picky(items: list[str]) -> list[str]:
        if "bad" in items:
            raise ValueError("bad item")
        return [item.upper() for item in items]

    async def scenario():
        batcher = MicroBatcher(picky, max_batch=8, max_wait_ms=20)
        results = await asyncio.gather(
            *(batcher.submit(item) for item in ("a", "bad", "c")), return_exceptions=True
        )
        await batcher.close()
        return results

    first, failed, last = run(scenario())
    assert (first, last) == ("A", "C")
    assert isinstance(failed, ValueError) and str(failed) == "bad item"


def test_the_batch_runs_in_one_worker_thread_off_the_loop():
    threads: set[str] = set()

    def slow(items):
        threads.add(threading.current_thread().name)
        time.sleep(0.3)
        return items

    async def scenario() -> float:
        batcher = MicroBatcher(slow, max_batch=2, max_wait_ms=1)
        work = asyncio.gather(*(batcher.submit(i) for i in range(6)))
        await asyncio.sleep(0.05)
        start = time.perf_counter()
        await asyncio.sleep(0.01)  # the loop answers while the batch sleeps in its thread
        answered = time.perf_counter() - start
        assert await work == list(range(6))
        await batcher.close()
        return answered

    assert run(scenario()) < 0.1
    assert len(threads) == 1 and threading.current_thread().name not in threads


def test_close_fails_the_waiting_items_and_a_new_loop_starts_over():
    started = threading.Event()

    def slow(items):
        started.set()
        time.sleep(0.2)
        return items

    batcher = MicroBatcher(slow, max_batch=1, max_wait_ms=0)

    async def scenario():
        running = asyncio.ensure_future(batcher.submit("running"))
        waiting = asyncio.ensure_future(batcher.submit("waiting"))
        await asyncio.to_thread(started.wait)
        await batcher.close()
        return await asyncio.gather(running, waiting, return_exceptions=True)

    running, waiting = run(scenario())
    assert isinstance(waiting, RuntimeError) and "shutting down" in str(waiting)
    assert running == "running"  # the batch already running finished first

    async def again():
        try:
            return await batcher.submit("again")
        finally:
            await batcher.close()

    assert run(again()) == "again"


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="max_batch"):
        MicroBatcher(list, max_batch=0)
    with pytest.raises(ConfigError, match="max_wait_ms"):
        MicroBatcher(list, max_wait_ms=-1)


def test_eager_waits_only_for_items_being_prepared():
    sizes: list[int] = []

    def identity(items):
        sizes.append(len(items))
        return items

    async def prepared_then_submitted(batcher, item, seconds: float):
        with batcher.incoming():
            await asyncio.sleep(seconds)  # decoding
        return await batcher.submit(item)

    async def scenario() -> float:
        batcher = MicroBatcher(identity, max_batch=8, max_wait_ms=2000, eager=True)
        start = time.perf_counter()
        assert await batcher.submit("alone") == "alone"  # nothing else coming: no wait
        alone = time.perf_counter() - start
        both = await asyncio.gather(
            prepared_then_submitted(batcher, "fast", 0.0),
            prepared_then_submitted(batcher, "slow", 0.2),  # the batch waits for this one
        )
        assert both == ["fast", "slow"]
        await batcher.close()
        return alone

    assert run(scenario()) < 0.5
    assert sizes == [1, 2]
