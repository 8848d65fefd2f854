"""Admission control, per-request deadlines and the registry of work in flight.

A Best-of-N request costs ``best_of`` sequences of engine work (times the number
of prompts on ``/v1/completions``), so admission counts sequences, not requests.
``WorkGate`` is a FIFO gate over that count:

* ``check(cost)``    a request larger than the whole bound is a 400 (it could never run);
* ``admit(cost)``    room now: a ``Ticket``; none, after ``admission_timeout``: 429 with
                     ``Retry-After``. Requests queue in arrival order, so a large one is
                     not starved by a stream of small ones.
* ``start(work, t)`` runs the work as a task under the deadline (504 and the work cancelled,
                     which aborts every candidate in the engine), releases the ticket
                     whenever the task ends, however it ends, and tracks the task so that
                     shutdown can abort whatever is left.

It knows nothing of HTTP: routes call it after a request is planned, so a bad
request never queues.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from .errors import (
    DeadlineExceededError,
    InvalidRequestError,
    RateLimitError,
    draining_error,
)
from .metrics import Metrics

T = TypeVar("T")


class Ticket:
    """``cost`` sequences of admission; ``release`` is idempotent."""

    __slots__ = ("cost", "_gate")

    def __init__(self, gate: WorkGate, cost: int) -> None:
        self.cost = cost
        self._gate: WorkGate | None = gate

    def release(self) -> None:
        gate, self._gate = self._gate, None
        if gate is not None:
            gate._release(self.cost)


class WorkGate:
    def __init__(
        self,
        *,
        max_sequences: int = 0,
        admission_timeout: float = 0.0,
        request_timeout: float | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.capacity = max_sequences  # 0: unbounded
        self.admission_timeout = admission_timeout
        self.request_timeout = request_timeout
        self.metrics = metrics or Metrics()
        self.in_use = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.closed = False  # draining: no more admissions
        self._aborted = False  # abort_all ran: work started from now on is refused

    # ---------------------------------------------------------------- shutdown

    def open(self) -> None:
        """Admit again (a new lifespan of the same app)."""
        self.closed = self._aborted = False

    def close(self) -> None:
        """Admit nothing more: every request queued for admission fails with a 503 now, and so
        does any later one. Idempotent."""
        self.closed = True
        while self._waiters:
            _, future = self._waiters.popleft()
            if not future.done():
                future.set_exception(draining_error())

    # ---------------------------------------------------------------- admission

    def check(self, cost: int) -> None:
        if self.capacity and cost > self.capacity:
            raise InvalidRequestError(
                f"this request asks for {cost} sequences (best_of x prompts); this server runs "
                f"at most {self.capacity} at once",
                param="best_of",
            )

    def _fits(self, cost: int) -> bool:
        return not self.capacity or self.in_use + cost <= self.capacity

    def try_admit(self, cost: int) -> Ticket | None:
        """A ticket if there is room now; None if the request must queue; 429 if it may not;
        503 once the gate is closed."""
        if self.closed:
            raise draining_error()
        self.check(cost)
        if not self._waiters and self._fits(cost):
            self._take(cost)
            self.metrics.admission_wait.observe(0.0)
            return Ticket(self, cost)
        if self.admission_timeout <= 0:
            self._reject()
        return None

    async def admit(self, cost: int) -> Ticket:
        """A ticket, waiting (in arrival order) up to ``admission_timeout``; else 429."""
        ticket = self.try_admit(cost)
        if ticket is not None:
            return ticket
        m = self.metrics
        start = time.perf_counter()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (cost, future)
        self._waiters.append(entry)
        m.admission_queued.inc()
        try:
            # not asyncio.wait_for: on 3.11 it swallows a cancellation that arrives just as the
            # grant does, and the caller, believing itself cancelled, would never release
            async with asyncio.timeout(self.admission_timeout):
                await asyncio.shield(future)
        except TimeoutError:
            if self._withdraw(entry):
                self._reject()
            failed = future.exception()  # closed just as the wait timed out
            if failed is not None:
                raise failed from None
            # granted just as the wait timed out: keep it
        except BaseException:  # cancelled (the client left while queued), or closed
            if not self._withdraw(entry) and future.exception() is None:
                self._release(cost)  # granted as it was cancelled: give it back
            raise
        finally:
            m.admission_queued.dec()
        m.admission_wait.observe(time.perf_counter() - start)
        return Ticket(self, cost)

    def _reject(self) -> None:
        self.metrics.admission_rejected.inc()
        retry = max(1, math.ceil(self.admission_timeout))
        raise RateLimitError(
            f"the server is at capacity ({self.in_use} of {self.capacity} sequences in flight); "
            "retry later",
            code="server_busy",
            headers={"Retry-After": str(retry)},
        )

    def _take(self, cost: int) -> None:
        self.in_use += cost
        self.metrics.sequences_in_flight.set(self.in_use)

    def _release(self, cost: int) -> None:
        self.in_use -= cost
        # wake waiters in arrival order while they fit; the head blocks the rest (no starvation)
        while self._waiters:
            head_cost, future = self._waiters[0]
            if future.done():
                self._waiters.popleft()
                continue
            if not self._fits(head_cost):
                break
            self._waiters.popleft()
            self.in_use += head_cost
            future.set_result(None)
        self.metrics.sequences_in_flight.set(self.in_use)

    def _withdraw(self, entry: tuple[int, asyncio.Future[None]]) -> bool:
        """Take a waiter out of the queue: False if it had been granted already."""
        cost, future = entry
        if future.done():
            return False
        future.cancel()
        self._waiters.remove(entry)
        self._release(0)  # a smaller request behind the one that left may fit now
        return True

    # ------------------------------------------------------------------- work

    def start(self, work: Coroutine[Any, Any, T], ticket: Ticket) -> asyncio.Task[T]:
        """Run ``work`` under the deadline; the ticket goes back when the task ends."""
        task = asyncio.ensure_future(self._deadline(work))
        self.tasks.add(task)

        def done(t: asyncio.Task[T]) -> None:
            self.tasks.discard(t)
            ticket.release()

        task.add_done_callback(done)
        return task

    async def _deadline(self, work: Coroutine[Any, Any, T]) -> T:
        if self._aborted:  # granted before shutdown, started after abort_all: too late
            work.close()
            raise draining_error()
        if self.request_timeout is None:
            return await work
        try:
            async with asyncio.timeout(self.request_timeout) as scope:
                return await work
        except TimeoutError:
            if not scope.expired():
                raise
            self.metrics.request_timeouts.inc()
            raise DeadlineExceededError(
                f"the request did not finish within this server's {self.request_timeout:g} s "
                "deadline; its work was aborted",
                code="request_timeout",
            ) from None

    async def abort_all(self, grace_s: float = 5.0) -> int:
        """Cancel every task in flight (aborting its engine work); wait up to ``grace_s``.
        Work started after this (granted before the gate closed) is refused with a 503."""
        self._aborted = True
        tasks = list(self.tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=grace_s)
        return len(tasks)
