"""One notion of a task: a world with checkable answers.

A task is a seeded problem generator, its prompt, reference solutions, a checker (is this
completion right for this problem?) and, where it has one, a step checker. Training,
evaluation, export and the load tester take a task and never compare answers themselves.

Every world's prompt carries all its checker needs, so ``parse(question)`` recovers the
problem from a record's question: records and JSONL datasets need only name their task.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from ..answers import DEFAULT_RULES, final_line

# The held-out stream: evaluation problems are drawn from this seed, and the first
# HELD_OUT of them are kept out of every training stream by prompt.
EVAL_SEED = 1234
HELD_OUT = 1000


class Problem(Protocol):
    @property
    def question(self) -> str: ...  # the user message, exactly

    @property
    def answer(self) -> str: ...  # one right answer line's content (for records and voting)


class Task(Protocol):
    name: str
    system_prompt: str  # the SFT chat's system message ("" for none)
    # how an answer is extracted for voting (``bon_server.answers`` rule names): two
    # completions give the same answer when these rules extract the same string
    answer_rules: tuple[str, ...] = DEFAULT_RULES

    def problems(self, count: int, seed: int) -> list[Any]:
        """``count`` problems from their own ``random.Random(seed)`` stream."""

    def sample(self, rng: Any) -> Any:
        """One problem drawn from ``rng`` (a ``random.Random``)."""

    def reference(self, problem: Any) -> str:
        """A worked solution: one step a line, then ``The answer is ....``"""

    def check(self, problem: Any, completion: str) -> bool:
        """Ground truth: is this completion right for this problem?"""

    def check_step(self, problem: Any, steps: Sequence[str], i: int) -> bool | None:
        """Is step ``i`` right given steps ``0..i-1`` (None: not a step this world knows)?"""

    def parse(self, question: str) -> Any | None:
        """The problem whose ``question`` this is; None for another world's prompt."""

    def partial_checks(self, problem: Any, completion: str) -> dict[str, bool]:
        """Named parts of the checker (a verifier that knows only one), for ``ceilings``."""

    # optional: ``corrupt(problem, completion, rng) -> str | None``, a near miss of a right
    # completion that the checker refuses (hard negatives for ``train-orm``)


def answer_line(completion: str) -> str | None:
    """The content of the last line ``The answer is ....`` (the server's ``final_line``)."""
    return final_line(completion)


def completion_steps(completion: str) -> list[str]:
    """The non-empty lines before the answer line (all lines where there is none)."""
    lines = [line.strip() for line in completion.strip().splitlines() if line.strip()]
    if lines and answer_line(lines[-1]) is not None:
        lines = lines[:-1]
    return lines


def held_out_questions(task: Task, count: int = HELD_OUT) -> set[str]:
    if getattr(task, "finite", False):  # a dataset: its whole held-out part
        return {p.question for p in task.problems(None, EVAL_SEED)}  # type: ignore[arg-type]
    return {p.question for p in task.problems(count, EVAL_SEED)}


class Stream:
    """Problems drawn one by one from ``rng``, skipping prompts in ``excluded`` (counted)."""

    def __init__(self, task: Task, rng: Any, excluded: set[str]) -> None:
        self.task, self.rng, self.excluded = task, rng, excluded
        self.drawn = self.skipped = 0

    def next(self) -> Any:
        while True:
            problem = self.task.sample(self.rng)
            self.drawn += 1
            if problem.question not in self.excluded:
                return problem
            self.skipped += 1


def training_problems(
    task: Task, count: int, seed: int, exclude: set[str]
) -> tuple[list[Any], int]:
    """``count`` problems of seed ``seed``'s stream whose prompts are not in ``exclude``, and
    how many draws were skipped (how often a fresh draw repeats a held-out prompt)."""
    import random

    if getattr(task, "finite", False):  # a dataset: its training part, shuffled by seed
        pool = [p for p in task.problems(None, seed) if p.question not in exclude]  # type: ignore[arg-type]
        return pool[:count], 0
    stream = Stream(task, random.Random(seed), exclude)
    problems = [stream.next() for _ in range(count)]
    return problems, stream.skipped
