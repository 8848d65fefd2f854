"""Programmatic step scorers: a world's exact checkers, or your own Python function.

``--verifier task:<world>`` (``task:countdown``, ``task:paths``, ``task:arith``) scores every
step with the world's exact step checker and the answer line with the world's checker, the
problem read back from the prompt (each world's prompt carries all its checker needs). It
is the upper bound a perfect PRM gives, and with ``last`` aggregation (its default) the
score of a finished candidate is its answer's check: Best-of-N with it is the oracle, and
step search with it shows what search adds beyond picking.

``--verifier py:module:function`` calls your function with the prompt's question and the
steps so far::

    def score(question: str, steps: list[str]) -> list[float] | float: ...

returning one score per step (higher is better) or one score for the last step (the
earlier steps then keep what they were given before). It may be ``async``; a plain
function runs in a worker thread, so a slow checker (a proof checker, a test runner) does
not stall the server. Its exceptions are the verifier failing (a 503), never a crash.

Both are step scorers (``kind == "prm"``): they serve ``selector: verifier``, pruning and
the step searches (``search: beam | dvts | particles``), and their step scores show in
``return_candidates`` like a PRM's.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import InvalidRequestError
from ..types import Candidate, Prompt
from .base import aggregate
from .steps import DEFAULT_SEPARATOR, split_steps

# a line the world's step checker does not know (not one of its step shapes): every world
# writes its solutions as steps and an answer line, so any other line is a mistake
UNKNOWN_STEP = 0.0


class TaskStepScorer:
    """A world's exact checkers as a step scorer."""

    kind = "prm"

    def __init__(self, world: str, aggregation: str = "last",
                 step_separator: str = DEFAULT_SEPARATOR) -> None:
        from ..tasks import WORLDS, get_task
        from ..tasks.base import answer_line

        if world not in WORLDS:
            raise ValueError(f"unknown world {world!r} for task:<world>; valid worlds: "
                             f"{', '.join(WORLDS)}")
        self.world = world
        self.task = get_task(world)
        self.aggregation = aggregation
        self.separator = step_separator
        self._answer_line = answer_line

    def _problem(self, prompt: Prompt) -> Any:
        problem = self.task.parse(prompt.question())
        if problem is None:
            raise InvalidRequestError(
                f"this server's verifier (task:{self.world}) scores {self.world} problems, "
                f"and this prompt is not one (the last user message must be the world's "
                f"prompt, exactly)",
                param="messages" if prompt.messages is not None else "prompt",
            )
        return problem

    def steps_of(self, problem: Any, text: str) -> list[float]:
        steps = split_steps(text, self.separator)
        answered = bool(steps) and self._answer_line(steps[-1]) is not None
        work = steps[:-1] if answered else steps
        scores = []
        for i in range(len(work)):
            ok = self.task.check_step(problem, work, i)
            scores.append(UNKNOWN_STEP if ok is None else float(ok))
        if answered:
            scores.append(float(self.task.check(problem, text)))
        elif not text.endswith(self.separator) or not steps:
            # ended without an answer (not a partial solution stopped at a step's end)
            scores.append(0.0)
        return scores

    async def step_scores(self, prompt: Prompt, candidates: Sequence[Candidate]
                          ) -> list[list[float]]:
        problem = self._problem(prompt)
        return [self.steps_of(problem, c.text) for c in candidates]

    async def score(self, prompt: Prompt, candidates: Sequence[Candidate],
                    aggregation: str | None = None) -> list[float]:
        steps = await self.step_scores(prompt, candidates)
        return [aggregate(s, aggregation or self.aggregation) for s in steps]


class PythonStepScorer:
    """``py:module:function``: your function scores the steps so far."""

    kind = "prm"

    def __init__(self, fn: Callable[..., Any], name: str, aggregation: str = "last",
                 step_separator: str = DEFAULT_SEPARATOR) -> None:
        self.fn = fn
        self.name = name
        self.aggregation = aggregation
        self.separator = step_separator
        self.is_async = inspect.iscoroutinefunction(fn)

    @classmethod
    def load(cls, spec: str, **kwargs: Any) -> PythonStepScorer:
        """``module:function`` (the part after ``py:``), imported now: a bad name fails at
        startup, not at the first request."""
        module_name, _, attr = spec.partition(":")
        if not module_name or not attr:
            raise ValueError(f"py: verifier {spec!r} must be module:function")
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"cannot load the py: verifier {spec!r}: {exc}") from None
        if not callable(fn):
            raise ValueError(f"py: verifier {spec!r} is not callable")
        return cls(fn, spec, **kwargs)

    async def _call(self, question: str, steps: list[str]) -> list[float]:
        if self.is_async:
            out = await self.fn(question, steps)
        else:
            out = await asyncio.to_thread(self.fn, question, steps)
        if isinstance(out, int | float):
            return [float(out)] * max(1, len(steps))
        scores = [float(x) for x in out]
        if len(scores) != len(steps):
            raise ValueError(f"{self.name} returned {len(scores)} scores for {len(steps)} steps")
        return scores

    async def step_scores(self, prompt: Prompt, candidates: Sequence[Candidate]
                          ) -> list[list[float]]:
        question = prompt.question()
        return list(await asyncio.gather(
            *(self._call(question, split_steps(c.text, self.separator)) for c in candidates)
        ))

    async def score(self, prompt: Prompt, candidates: Sequence[Candidate],
                    aggregation: str | None = None) -> list[float]:
        steps = await self.step_scores(prompt, candidates)
        return [aggregate(s, aggregation or self.aggregation) for s in steps]


def is_plugin(verifier: str | None) -> bool:
    return verifier is not None and verifier.startswith(("task:", "py:"))


def build_plugin(verifier: str, aggregation: str | None, separator: str) -> Any:
    """The step scorer a ``task:`` or ``py:`` verifier names (ValueError if it cannot be)."""
    kind, _, rest = verifier.partition(":")
    how = aggregation or "last"
    if kind == "task":
        return TaskStepScorer(rest, aggregation=how, step_separator=separator)
    return PythonStepScorer.load(rest, aggregation=how, step_separator=separator)
