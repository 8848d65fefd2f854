"""run_all: every result in order, or the first failure with the others cancelled."""

from __future__ import annotations

import asyncio

import pytest

from bon_server.concurrency import first_error, run_all
from bon_server.errors import InvalidRequestError


def test_results_in_order():
    async def value(x, delay):
        await asyncio.sleep(delay)
        return x

    works = [lambda: value(1, 0.02), lambda: value(2, 0.0), lambda: value(3, 0.01)]
    assert asyncio.run(run_all(works)) == [1, 2, 3]


def test_a_failure_cancels_the_others_and_is_raised_alone():
    cancelled = []

    async def hang():
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def fail():
        await asyncio.sleep(0.01)
        raise InvalidRequestError("bad prompt", param="prompt")

    with pytest.raises(InvalidRequestError, match="bad prompt"):
        asyncio.run(run_all([hang, fail, hang]))
    assert cancelled == [True, True]


def test_first_error_prefers_a_bon_error():
    crash, mistake = RuntimeError("boom"), InvalidRequestError("bad")
    group = BaseExceptionGroup("g", [crash, ExceptionGroup("inner", [mistake])])
    assert first_error(group) is mistake
    assert first_error(BaseExceptionGroup("g", [crash])) is crash
