"""A request's answers as votes (``answers.AnswerGroups``), off the event loop where a rule
compares answers pairwise.

A pairwise rule (``math``) runs sympy, so its grouping runs in a daemon thread and the request
waits for it at most ``GROUPING_TIMEOUT_S``; past that the request votes by text.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar, cast

from .answers import AnswerGroups

# how long a request waits for its pairwise answer grouping (one wave's) before voting by text
GROUPING_TIMEOUT_S = 10.0

log = logging.getLogger(__name__)
T = TypeVar("T")


async def in_daemon_thread(fn: Callable[[], T]) -> T:
    """``fn()`` in a thread of its own, awaited. A daemon thread, not an executor's: sympy
    cannot be interrupted, and an executor's threads are joined at exit, so one stuck
    comparison would keep the server from stopping."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, exc: BaseException | None) -> None:
        if done.done():  # the caller stopped waiting
            return
        if exc is not None:
            done.set_exception(exc)
        else:
            done.set_result(cast(T, result))

    def work() -> None:
        try:
            result, exc = fn(), None
        except BaseException as e:  # handed to the awaiting task, raised there
            result, exc = None, e
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
            loop.call_soon_threadsafe(settle, result, exc)

    threading.Thread(target=work, name="bon-answers", daemon=True).start()
    return await done


class Votes:
    """A request's answers as votes: ``AnswerGroups`` over its candidates as they are drawn,
    run off the loop where a rule compares pairwise. After a timeout the request votes by
    text for all its candidates (one request never mixes the two); the grouping thread is
    left to finish alone and never touched again."""

    def __init__(self, rules: Sequence[str], timeout_s: float | None = None) -> None:
        self.groups = AnswerGroups(rules)
        self.timeout_s = GROUPING_TIMEOUT_S if timeout_s is None else timeout_s
        self.texts: list[str] = []
        self.answers: list[str | None] = []
        self.timed_out = False

    async def add(self, texts: Sequence[str]) -> None:
        texts = list(texts)
        self.texts.extend(texts)
        if not self.groups.pairwise:
            self.answers.extend(self.groups.add(texts))
        elif self.timed_out:
            self.answers.extend(self.groups.as_text(texts))
        else:
            groups = self.groups
            try:
                keys = await asyncio.wait_for(
                    in_daemon_thread(lambda: groups.add(texts)), self.timeout_s
                )
            except TimeoutError:
                self.timed_out = True
                self.answers = self.groups.as_text(self.texts)
                log.warning(
                    "answer grouping (%s) took over %.1f s: this request votes by text",
                    ",".join(self.groups.rules), self.timeout_s,
                )
                return
            self.answers.extend(keys)

    def report(self) -> None:
        """One log line where answers were compared as text instead of by the rule."""
        fallbacks = self.groups.fallbacks
        if fallbacks and not self.timed_out:
            log.info(
                "answer rule %s compared %d of %d answers as text (%s)",
                ",".join(self.groups.rules), sum(fallbacks.values()), len(self.texts),
                ", ".join(f"{why}: {k}" for why, k in sorted(fallbacks.items())),
            )
