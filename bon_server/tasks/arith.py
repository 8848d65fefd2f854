"""The arithmetic world: problems like ``What is 17 + 4 * 23 - 9?``.

This module owns problem generation, the step-by-step reference solutions the policy is
trained on, and the answer checker. The checker extracts answers with
``bon_server.answers.extract_answer``, so "correct" here and "same answer" in the server
mean one thing.

Reference solution format (one operation per step, ``*`` first, then ``+``/``-``, each
left to right; the final line names the answer)::

    4 * 23 = 92
    17 + 92 = 109
    109 - 9 = 100
    The answer is 100.

``step_arithmetic_ok`` checks one ``a op b = c`` line on its own: an exact (but partial)
step checker, used to measure what a perfect arithmetic verifier would be worth.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..answers import DEFAULT_RULES, extract_answer, normalize_answer

OPS: tuple[str, ...] = ("+", "-", "*")
MIN_OPERANDS, MAX_OPERANDS = 2, 4
MIN_VALUE, MAX_VALUE = 2, 30


@dataclass(frozen=True)
class Problem:
    """An expression ``operands[0] ops[0] operands[1] ...`` (len(ops) == len(operands) - 1)."""

    operands: tuple[int, ...]
    ops: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.ops) != len(self.operands) - 1 or not self.operands:
            raise ValueError("need exactly one operator between each pair of operands")
        if any(op not in OPS for op in self.ops):
            raise ValueError(f"operators must be among {OPS}")

    @property
    def expression(self) -> str:
        return format_expression(self.operands, self.ops)

    @property
    def question(self) -> str:
        return f"What is {self.expression}?"

    @property
    def answer(self) -> int:
        return evaluate(self.operands, self.ops)


def format_expression(values: tuple[int, ...] | list[int], ops: tuple[str, ...] | list[str]) -> str:
    """``17 + 4 * 23 - 9``; a negative intermediate is written as ``-5``."""
    parts = [str(values[0])]
    for op, value in zip(ops, values[1:], strict=True):
        parts += [op, str(value)]
    return " ".join(parts)


def _step(values: list[int], ops: list[str]) -> tuple[list[int], list[str]]:
    """Perform exactly one operation: the leftmost ``*``, else the leftmost ``+``/``-``."""
    i = ops.index("*") if "*" in ops else 0
    a, b, op = values[i], values[i + 1], ops[i]
    result = a * b if op == "*" else a + b if op == "+" else a - b
    return values[:i] + [result] + values[i + 2 :], ops[:i] + ops[i + 1 :]


def evaluate(operands: tuple[int, ...] | list[int], ops: tuple[str, ...] | list[str]) -> int:
    """Standard precedence: ``*`` before ``+``/``-``, left to right."""
    values, rest = list(operands), list(ops)
    while rest:
        values, rest = _step(values, rest)
    return values[0]


def reference_solution(problem: Problem) -> str:
    """One line per operation, ``a op b = c`` (the leftmost ``*`` first, then left to right),
    then ``The answer is N.``

    The operands of each step sit right before its ``=``, where a character-level model
    writes the result. (A first policy that rewrote the whole remaining expression on every
    line reached 6% pass@1; it was also trained on batches sorted by length, so that figure
    mixes the format's effect with the batching's.)
    """
    values, ops = list(problem.operands), list(problem.ops)
    lines = []
    while ops:
        i = ops.index("*") if "*" in ops else 0
        a, b, op = values[i], values[i + 1], ops[i]
        values, ops = _step(values, ops)
        lines.append(f"{a} {op} {b} = {values[i]}")
    lines.append(f"The answer is {values[0]}.")
    return "\n".join(lines)


def sample_problem(rng: random.Random) -> Problem:
    """2..4 operands, each uniform in 2..30; each operator uniform in ``+ - *``."""
    n = rng.randint(MIN_OPERANDS, MAX_OPERANDS)
    operands = tuple(rng.randint(MIN_VALUE, MAX_VALUE) for _ in range(n))
    ops = tuple(rng.choice(OPS) for _ in range(n - 1))
    return Problem(operands, ops)


def sample_problems(n: int, seed: int) -> list[Problem]:
    """``n`` problems from their own ``random.Random(seed)`` stream."""
    rng = random.Random(seed)
    return [sample_problem(rng) for _ in range(n)]


_STEP = re.compile(r"^\s*(-?\d+) ([-+*]) (-?\d+) = (-?\d+)\s*$")


def parse_step(step: str) -> tuple[int, str, int, int] | None:
    """``(a, op, b, c)`` of an ``a op b = c`` line; None for a line of another shape."""
    match = _STEP.match(step)
    if not match:
        return None
    return int(match[1]), match[2], int(match[3]), int(match[4])


def step_arithmetic_ok(step: str, ops: str | tuple[str, ...] = OPS) -> bool | None:
    """Is ``a op b = c`` arithmetically right? None for a line of another shape, or whose
    operator is not among ``ops`` (a checker that knows only some operations).

    It does not check that ``a`` and ``b`` are the right operands (whether the step follows
    the expression); on this policy's samples nearly every wrong answer has a line where
    this returns False.
    """
    parsed = parse_step(step)
    if parsed is None or parsed[1] not in ops:
        return None
    a, op, b, c = parsed
    return (a * b if op == "*" else a + b if op == "+" else a - b) == c


_QUESTION = re.compile(r"^\s*What is (\d+(?:\s*[-+*]\s*\d+)*)\s*\?\s*$")


def parse_question(text: str) -> Problem | None:
    """The inverse of ``Problem.question``; None if the text is not such a question."""
    match = _QUESTION.match(text)
    if not match:
        return None
    tokens = re.findall(r"\d+|[-+*]", match.group(1))  # alternates number, op, number, ...
    return Problem(tuple(int(t) for t in tokens[0::2]), tuple(tokens[1::2]))


def check_answer(problem_or_answer: Problem | int | str, completion: str) -> bool:
    """True iff the completion's extracted final answer equals the problem's answer."""
    if isinstance(problem_or_answer, Problem):
        expected = str(problem_or_answer.answer)
    else:
        expected = normalize_answer(str(problem_or_answer))
    found = extract_answer(completion)
    return found is not None and found == expected


class ArithTask:
    """The arithmetic world as a ``Task``."""

    name = "arith"
    system_prompt = "You are a helpful assistant that is good at arithmetic."
    answer_rules = DEFAULT_RULES

    def sample(self, rng: random.Random) -> Problem:
        return sample_problem(rng)

    def problems(self, count: int, seed: int) -> list[Problem]:
        return sample_problems(count, seed)

    def reference(self, problem: Problem) -> str:
        return reference_solution(problem)

    def check(self, problem: Problem, completion: str) -> bool:
        return check_answer(problem, completion)

    def check_step(self, problem: Problem, steps: Sequence[str], i: int) -> bool | None:
        """Arithmetic only: whether the step follows the expression is not checked."""
        return step_arithmetic_ok(steps[i])

    def partial_checks(self, problem: Problem, completion: str) -> dict[str, bool]:
        """For ``ceilings``: the step checker on ``+``/``-`` lines only, ``*`` lines taken as
        right (a verifier that has learned addition and subtraction but not multiplication)."""
        lines = completion.strip().splitlines()
        return {"addsub_step_checker": all(step_arithmetic_ok(s, ops="+-") is not False
                                           for s in lines)}

    def parse(self, question: str) -> Problem | None:
        return parse_question(question)
