"""The scorer interface, PRM step-score aggregation, and cross-request micro-batching.

A scorer maps (prompt, candidates) to one float per candidate, higher is better.
``MicroBatcher`` lets a scorer whose backend is a blocking forward pass merge the
texts of concurrent requests into shared batches, run off the event loop.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar

from ..types import Candidate, Prompt


class Scorer(Protocol):
    kind: str  # "orm" or "prm"

    async def score(
        self, prompt: Prompt, candidates: Sequence[Candidate], aggregation: str | None = None
    ) -> list[float]: ...


class StepScorer(Scorer, Protocol):
    """A PRM (``kind == "prm"``): its per-step scores too, and the aggregation it defaults to."""

    aggregation: str

    async def step_scores(
        self, prompt: Prompt, candidates: Sequence[Candidate]
    ) -> list[list[float]]: ...


def _prod(xs: Sequence[float]) -> float:
    return math.prod(xs)


AGGREGATIONS: dict[str, Callable[[Sequence[float]], float]] = {
    "min": min,
    "prod": _prod,
    "last": lambda xs: xs[-1],
    "mean": lambda xs: sum(xs) / len(xs),
}


def check_aggregation(name: str) -> str:
    if name not in AGGREGATIONS:
        valid = ", ".join(AGGREGATIONS)
        raise ValueError(f"unknown prm_aggregation {name!r}; valid aggregations: {valid}")
    return name


def aggregate(step_scores: Sequence[float], how: str) -> float:
    """One number from a PRM's per-step scores; no steps scores 0."""
    if not step_scores:
        return 0.0
    return float(AGGREGATIONS[check_aggregation(how)](step_scores))


T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher(Generic[T, R]):
    """Merge concurrent ``submit`` calls into batches of at most ``max_batch`` items.

    ``fn`` is blocking (a forward pass) and runs in a worker thread, one batch at
    a time; while it runs, new submissions queue up and form the next batch.
    """

    def __init__(self, fn: Callable[[list[T]], list[R]], max_batch: int) -> None:
        self._fn = fn
        self._max_batch = max_batch
        self._pending: list[tuple[list[T], asyncio.Future[list[R]]]] = []
        self._worker: asyncio.Task[None] | None = None
        self.batches_run = 0

    async def submit(self, items: Sequence[T]) -> list[R]:
        if not items:
            return []
        future: asyncio.Future[list[R]] = asyncio.get_running_loop().create_future()
        self._pending.append((list(items), future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._pending:
            jobs, size = [], 0
            while self._pending and (
                not jobs or size + len(self._pending[0][0]) <= self._max_batch
            ):
                items, future = self._pending.pop(0)
                if future.cancelled():
                    continue
                jobs.append((items, future))
                size += len(items)
            if not jobs:
                continue
            flat = [item for items, _ in jobs for item in items]
            try:
                results = await asyncio.to_thread(self._run, flat)
            except Exception as exc:
                for _, future in jobs:
                    if not future.done():
                        future.set_exception(exc)
                continue
            offset = 0
            for items, future in jobs:
                if not future.done():
                    future.set_result(results[offset : offset + len(items)])
                offset += len(items)

    def _run(self, flat: list[T]) -> list[R]:
        results: list[R] = []
        for start in range(0, len(flat), self._max_batch):
            results.extend(self._fn(flat[start : start + self._max_batch]))
        self.batches_run += 1
        return results
