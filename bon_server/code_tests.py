"""Candidates checked by the request's unit tests (the ``tests`` field), in the sandbox.

Each candidate's program (its last fenced code block, or the whole text) runs with the tests in
``bon_server.sandbox``; its test score is the fraction it passes. Selection ranks by that score
first; ties go to the request's selector, where a vote is over the programs' behaviour on the
tests (which pass, fail or error), so that two identical wrong programs do not outvote a right
one and programs that behave alike vote together (AlphaCode clusters programs by behaviour).

Candidates run concurrently up to ``--tests-concurrency`` across all requests; their time counts
against the request's deadline, and cancelling the request (deadline, disconnect) kills every
running one. A fault of the sandbox itself (``SandboxError``) is a 503, never a low score.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import ServiceUnavailableError
from .sandbox import Limits, SandboxError, TestReport, extract_program, run_tests
from .types import Candidate


@dataclass(frozen=True, slots=True)
class Tests:
    """One request's tests and the limits each candidate runs under."""

    snippets: tuple[str, ...]
    limits: Limits


def signature(report: TestReport) -> str:
    """A candidate's behaviour on the tests, as its vote: how many tests passed, failed and
    errored, and the first error's last line."""
    return f"tests: {report.passed} passed, {report.failed} failed, {report.errored} errored" + (
        f" ({report.first_error})" if report.first_error else "")


class TestRunner:
    """Runs candidates' programs against tests, at most ``concurrency`` at once (the server's
    whole budget for the sandbox, shared by all requests)."""

    __test__ = False  # not a pytest class

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self._gate: asyncio.Semaphore | None = None  # made on the serving loop

    async def check(self, tests: Tests, candidates: Sequence[Candidate]) -> list[TestReport]:
        if self._gate is None:
            self._gate = asyncio.Semaphore(self.concurrency)
        gate = self._gate

        async def one(candidate: Candidate) -> TestReport:
            async with gate:
                return await run_tests(extract_program(candidate.text), tests.snippets,
                                       tests.limits)

        try:
            return list(await asyncio.gather(*(one(c) for c in candidates)))
        except SandboxError as exc:
            raise ServiceUnavailableError(f"the test sandbox failed: {exc}") from exc


def rank(order: Sequence[int], reports: Sequence[TestReport]) -> list[int]:
    """The selector's ranking, re-sorted by test score first (stable: ties keep its order)."""
    return sorted(order, key=lambda i: -reports[i].fraction)
