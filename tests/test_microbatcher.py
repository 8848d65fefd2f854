"""MicroBatcher: concurrent submissions share forward passes, results find their callers."""

from __future__ import annotations

import asyncio
import threading

import pytest

from bon_server.scorers.base import MicroBatcher


class Recorder:
    """A blocking 'forward pass' that records every batch it is given."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.batches: list[list[str]] = []
        self.fail_on = fail_on
        self.lock = threading.Lock()

    def __call__(self, items: list[str]) -> list[str]:
        with self.lock:
            self.batches.append(list(items))
        if self.fail_on is not None and self.fail_on in items:
            raise RuntimeError(f"cannot score {self.fail_on}")
        return [item.upper() for item in items]


def test_empty_submit_runs_nothing():
    fn = Recorder()
    batcher = MicroBatcher(fn, max_batch=4)
    assert asyncio.run(batcher.submit([])) == []
    assert fn.batches == []


def test_single_submit():
    fn = Recorder()
    batcher = MicroBatcher(fn, max_batch=4)
    assert asyncio.run(batcher.submit(["a", "b"])) == ["A", "B"]
    assert fn.batches == [["a", "b"]]
    assert batcher.batches_run == 1


def test_concurrent_submits_merge_and_results_go_back_in_order():
    fn = Recorder()
    batcher = MicroBatcher(fn, max_batch=64)
    requests = [[f"r{r}c{c}" for c in range(r + 1)] for r in range(6)]

    async def main():
        return await asyncio.gather(*(batcher.submit(items) for items in requests))

    results = asyncio.run(main())
    assert results == [[item.upper() for item in items] for items in requests]
    assert len(fn.batches) < len(requests)
    # every item was scored exactly once
    assert sorted(i for b in fn.batches for i in b) == sorted(i for r in requests for i in r)


def test_submits_while_a_batch_runs_form_the_next_batch():
    started, release = threading.Event(), threading.Event()
    batches: list[list[int]] = []

    def fn(items: list[int]) -> list[int]:
        batches.append(list(items))
        if len(batches) == 1:
            started.set()
            release.wait(timeout=10)
        return [i * 10 for i in items]

    batcher = MicroBatcher(fn, max_batch=64)

    async def main():
        first = asyncio.create_task(batcher.submit([1]))
        await asyncio.to_thread(started.wait, 10)
        # the first batch is in the worker thread: these three queue up behind it
        later = [asyncio.create_task(batcher.submit([k, k + 1])) for k in (2, 4, 6)]
        await asyncio.sleep(0)
        release.set()
        return await first, await asyncio.gather(*later)

    first, later = asyncio.run(main())
    assert first == [10]
    assert later == [[20, 30], [40, 50], [60, 70]]
    assert batches == [[1], [2, 3, 4, 5, 6, 7]]


def test_jobs_are_packed_up_to_max_batch():
    fn = Recorder()
    batcher = MicroBatcher(fn, max_batch=3)
    requests = [["a1", "a2"], ["b1", "b2"], ["c1"], ["d1", "d2", "d3"]]

    async def main():
        return await asyncio.gather(*(batcher.submit(items) for items in requests))

    results = asyncio.run(main())
    assert results == [[i.upper() for i in items] for items in requests]
    assert all(len(b) <= 3 for b in fn.batches)
    # a job is never split across batches when it fits; b and c share one
    assert fn.batches == [["a1", "a2"], ["b1", "b2", "c1"], ["d1", "d2", "d3"]]


def test_a_submission_larger_than_max_batch_is_split():
    fn = Recorder()
    batcher = MicroBatcher(fn, max_batch=2)
    items = ["a", "b", "c", "d", "e"]
    assert asyncio.run(batcher.submit(items)) == ["A", "B", "C", "D", "E"]
    assert fn.batches == [["a", "b"], ["c", "d"], ["e"]]


def test_an_exception_reaches_every_caller_of_that_batch():
    fn = Recorder(fail_on="bad")
    batcher = MicroBatcher(fn, max_batch=64)

    async def main():
        return await asyncio.gather(
            batcher.submit(["x"]),
            batcher.submit(["bad"]),
            batcher.submit(["y", "z"]),
            return_exceptions=True,
        )

    results = asyncio.run(main())
    assert len(fn.batches) == 1
    assert all(isinstance(r, RuntimeError) for r in results)
    assert all("cannot score bad" in str(r) for r in results)


def test_a_failed_batch_does_not_poison_the_next():
    fn = Recorder(fail_on="bad")
    batcher = MicroBatcher(fn, max_batch=1)

    async def main():
        return await asyncio.gather(
            batcher.submit(["bad"]), batcher.submit(["ok"]), return_exceptions=True
        )

    failed, ok = asyncio.run(main())
    assert isinstance(failed, RuntimeError)
    assert ok == ["OK"]

    async def again():
        return await batcher.submit(["fine"])

    assert asyncio.run(again()) == ["FINE"]


def test_a_cancelled_submitter_before_its_batch_is_skipped():
    fn = Recorder()
    batcher = MicroBatcher(fn, max_batch=64)

    async def main():
        tasks = [asyncio.create_task(batcher.submit([name])) for name in ("a", "b", "c")]
        await asyncio.sleep(0)  # every submit has queued its job
        tasks[1].cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        return results

    a, b, c = asyncio.run(main())
    assert a == ["A"]
    assert isinstance(b, asyncio.CancelledError)
    assert c == ["C"]
    assert fn.batches == [["a", "c"]]  # the cancelled job was never scored


def test_a_submitter_cancelled_mid_batch_does_not_break_the_others():
    started, release = threading.Event(), threading.Event()

    def fn(items: list[str]) -> list[str]:
        started.set()
        release.wait(timeout=10)
        return [i.upper() for i in items]

    batcher = MicroBatcher(fn, max_batch=64)

    async def main():
        tasks = [asyncio.create_task(batcher.submit([n, n + n])) for n in ("a", "b", "c")]
        await asyncio.to_thread(started.wait, 10)
        tasks[0].cancel()  # the batch is already in the worker thread
        await asyncio.sleep(0)
        release.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    a, b, c = asyncio.run(main())
    assert isinstance(a, asyncio.CancelledError)
    assert b == ["B", "BB"]
    assert c == ["C", "CC"]


@pytest.mark.parametrize("max_batch", [1, 2, 7])
def test_many_concurrent_callers_each_get_their_own_results(max_batch):
    fn = Recorder()
    batcher = MicroBatcher(fn, max_batch=max_batch)
    requests = [[f"{r}-{c}" for c in range(1 + r % 4)] for r in range(20)]

    async def main():
        return await asyncio.gather(*(batcher.submit(items) for items in requests))

    assert asyncio.run(main()) == [[i.upper() for i in items] for items in requests]
    assert all(len(b) <= max_batch for b in fn.batches)
