"""Run several coroutines as one: all succeed, or the first failure cancels the rest.

``asyncio.gather`` leaves the siblings of a failed awaitable running; for us that means
engine work (or an upstream call) outliving the request that owned it. ``run_all`` uses a
``TaskGroup`` and raises ONE exception, preferring a ``BonError`` so it keeps its HTTP status.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from .errors import BonError

T = TypeVar("T")


async def run_all(works: Sequence[Callable[[], Awaitable[T]]]) -> list[T]:
    """Results in order; on a failure the others are cancelled and that failure is raised."""
    if len(works) == 1:
        return [await works[0]()]
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_coro(w)) for w in works]
    except BaseExceptionGroup as failures:
        raise first_error(failures) from None
    return [t.result() for t in tasks]


async def _coro(work: Callable[[], Awaitable[T]]) -> T:
    return await work()


def first_error(group: BaseExceptionGroup) -> BaseException:
    """The error to report from a (possibly nested) group: the first ``BonError`` (a client's
    mistake or a mapped failure says more than a crash), else the first exception."""
    leaves: list[BaseException] = []

    def walk(e: BaseException) -> None:
        if isinstance(e, BaseExceptionGroup):
            for sub in e.exceptions:
                walk(sub)
        else:
            leaves.append(e)

    walk(group)
    return next((e for e in leaves if isinstance(e, BonError)), leaves[0])
