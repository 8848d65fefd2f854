"""Countdown: make a target from 3 or 4 numbers with ``+ - *``, each number used once.

A problem: 3 or 4 numbers (equally likely), each uniform in 1..12, repeats allowed; the
target is the value of a random expression over every number exactly once (a random order,
a random parenthesisation, each operator uniform in ``+ - *``), redrawn until it lies in
1..100 (the numbers are kept, so their count and values keep their distributions). The
prompt, exactly::

    Using the numbers [3, 7, 12], make 33. Use + - * and each number exactly once.

A completion is right when its last line ``The answer is EXPR.`` holds only integer
literals, ``+ - *``, parentheses and spaces (no unary minus), its literals are the given
numbers as a multiset, and its value is the target. ``parse_expression`` is a small
recursive-descent parser bounded in length and depth: nothing is ever ``eval``-ed.

Reference solutions: one step a line, ``a op b = c``, each combining two numbers still
available, then the answer line::

    12 - 7 = 5
    5 * 3 = 15
    15 + 1 = 16
    The answer is (12 - 7) * 3 + 1.

The step checker is exact: step i is right when it is true arithmetic on two numbers still
available after steps 0..i-1, and the numbers left can still make the target.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from ..answers import final_line, register_rule
from .arith import parse_step
from .base import answer_line

MIN_NUMBERS, MAX_NUMBERS = 3, 4
MIN_VALUE, MAX_VALUE = 1, 12
MIN_TARGET, MAX_TARGET = 1, 100
MAX_EXPRESSION_CHARS = 200
MAX_DEPTH = 12
OPS = ("+", "-", "*")


@dataclass(frozen=True)
class Expr:
    """A binary expression tree; a leaf has ``op=None`` and its ``value``."""

    value: int
    op: str | None = None
    left: Expr | None = None
    right: Expr | None = None


def _apply(op: str, a: int, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def leaf(value: int) -> Expr:
    return Expr(value)


def node(op: str, left: Expr, right: Expr) -> Expr:
    return Expr(_apply(op, left.value, right.value), op, left, right)


def format_expr(e: Expr) -> str:
    """Infix with only the parentheses precedence needs: ``(12 - 7) * 3 + 1``."""
    if e.op is None:
        return str(e.value)
    assert e.left is not None and e.right is not None
    left, right = format_expr(e.left), format_expr(e.right)
    if e.op == "*":
        if e.left.op in ("+", "-"):
            left = f"({left})"
        if e.right.op in ("+", "-"):
            right = f"({right})"
    elif e.op == "-" and e.right.op in ("+", "-"):
        right = f"({right})"
    return f"{left} {e.op} {right}"


def steps_of(e: Expr) -> list[str]:
    """``a op b = c`` for each operation, innermost first (left subtree before right)."""
    if e.op is None:
        return []
    assert e.left is not None and e.right is not None
    return [*steps_of(e.left), *steps_of(e.right),
            f"{e.left.value} {e.op} {e.right.value} = {e.value}"]


def leaves(e: Expr) -> list[int]:
    if e.op is None:
        return [e.value]
    assert e.left is not None and e.right is not None
    return leaves(e.left) + leaves(e.right)


def _values(e: Expr) -> list[int]:
    if e.op is None:
        return [e.value]
    assert e.left is not None and e.right is not None
    return [*_values(e.left), *_values(e.right), e.value]


def random_expr(numbers: Sequence[int], rng: random.Random) -> Expr:
    """Every number once, in a random order, a random split at each node, random ops."""
    order = list(numbers)
    rng.shuffle(order)

    def build(items: list[int]) -> Expr:
        if len(items) == 1:
            return leaf(items[0])
        cut = rng.randint(1, len(items) - 1)
        return node(rng.choice(OPS), build(items[:cut]), build(items[cut:]))

    return build(order)


@dataclass(frozen=True)
class Problem:
    numbers: tuple[int, ...]
    target: int
    # the generating expression, for the reference (not part of the problem's identity)
    solution: str = field(default="", compare=False)

    @property
    def question(self) -> str:
        listed = ", ".join(str(n) for n in self.numbers)
        return (f"Using the numbers [{listed}], make {self.target}. "
                "Use + - * and each number exactly once.")

    @property
    def answer(self) -> str:
        return self.solution or (solve(self.numbers, self.target) or "")


# ------------------------------------------------------------------ the checker


class ExpressionError(ValueError):
    pass


_TOKEN = re.compile(r"\s*(?:(\d+)|([-+*()]))")


def _tokens(text: str) -> list[str]:
    out, i = [], 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        m = _TOKEN.match(text, i)
        if not m:
            raise ExpressionError(f"unexpected character {text[i]!r}")
        out.append(m.group(1) or m.group(2))
        i = m.end()
    return out


def parse_expression(text: str) -> Expr:
    """The tree of an expression of integer literals, ``+ - *`` and parentheses (``.value``
    is its value, ``leaves(...)`` its literals).

    Refuses unary minus, junk, more than ``MAX_EXPRESSION_CHARS`` characters and nesting
    deeper than ``MAX_DEPTH`` (raising ``ExpressionError``).
    """
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ExpressionError("expression too long")
    tokens = _tokens(text)
    if not tokens:
        raise ExpressionError("empty expression")
    pos = 0

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> str:
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def expr(depth: int) -> Expr:
        e = term(depth)
        while peek() in ("+", "-"):
            op = take()
            e = node(op, e, term(depth))
        return e

    def term(depth: int) -> Expr:
        e = factor(depth)
        while peek() == "*":
            take()
            e = node("*", e, factor(depth))
        return e

    def factor(depth: int) -> Expr:
        tok = peek()
        if tok is None:
            raise ExpressionError("expression ends early")
        if tok == "(":
            if depth >= MAX_DEPTH:
                raise ExpressionError("expression nested too deeply")
            take()
            e = expr(depth + 1)
            if peek() != ")":
                raise ExpressionError("unbalanced parentheses")
            take()
            return e
        if tok.isdigit():
            take()
            return leaf(int(tok))
        raise ExpressionError(f"expected a number or '(', got {tok!r}")  # unary minus too

    e = expr(0)
    if pos != len(tokens):
        raise ExpressionError(f"unexpected {tokens[pos]!r}")
    return e


def check_expression(problem: Problem, expression: str) -> bool:
    try:
        e = parse_expression(expression)
    except ExpressionError:
        return False
    return Counter(leaves(e)) == Counter(problem.numbers) and e.value == problem.target


# ------------------------------------------------------------------ solving and steps


@lru_cache(maxsize=200_000)
def _solve(numbers: tuple[int, ...], target: int, nonnegative: bool = False) -> Expr | None:
    """An expression over ``numbers`` (sorted tuple) worth ``target``, or None; with
    ``nonnegative``, one whose every intermediate value is >= 0."""
    return _search(tuple(leaf(n) for n in numbers), target, nonnegative)


def _search(pool: tuple[Expr, ...], target: int, nonnegative: bool) -> Expr | None:
    if len(pool) == 1:
        return pool[0] if pool[0].value == target else None
    for i in range(len(pool)):
        for j in range(len(pool)):
            if i == j:
                continue
            rest = tuple(p for k, p in enumerate(pool) if k not in (i, j))
            for op in OPS:
                if op in ("+", "*") and i > j:
                    continue  # commutative: one order is enough
                made = node(op, pool[i], pool[j])
                if nonnegative and made.value < 0:
                    continue
                found = _search((*rest, made), target, nonnegative)
                if found is not None:
                    return found
    return None


def solvable(numbers: Sequence[int], target: int) -> bool:
    return _solve(tuple(sorted(numbers)), target) is not None


def solve(numbers: Sequence[int], target: int) -> str | None:
    found = _solve(tuple(sorted(numbers)), target)
    return None if found is None else format_expr(found)


def step_ok(problem: Problem, steps: Sequence[str], i: int) -> bool | None:
    """Exact step label: steps 0..i are each true arithmetic on available numbers and the
    numbers left after step i can still make the target. None if step i is not ``a op b = c``.
    """
    if parse_step(steps[i]) is None:
        return None
    pool = Counter(problem.numbers)
    for step in steps[: i + 1]:
        parsed = parse_step(step)
        if parsed is None:
            return False
        a, op, b, c = parsed
        if _apply(op, a, b) != c:
            return False
        pool[a] -= 1
        pool[b] -= 1
        if pool[a] < 0 or pool[b] < 0:
            return False
        pool[c] += 1
    return solvable(list(pool.elements()), problem.target)


# ------------------------------------------------------------------ the task

def expression_value(text: str) -> str | None:
    """A Countdown answer as what makes it right or wrong: its value and its numbers.

    ``The answer is (12 - 7) * 3 + 1.`` and ``The answer is 1 + 3 * (12 - 7).`` are the same
    answer (``[1,3,7,12]->16``): every right answer to a problem is then one answer, and
    votes concentrate on it instead of scattering over the ways of writing it (as MATH's
    graders compare values, not strings). An answer line that is not such an expression
    (unary minus, junk, too long or deep: the checker's own parser refuses it) stays its text.
    """
    found = final_line(text)
    if found is None:
        return None
    try:
        e = parse_expression(found)
    except ExpressionError:
        return found
    numbers = ",".join(str(n) for n in sorted(leaves(e)))
    return f"[{numbers}]->{e.value}"


register_rule("expression_value", expression_value)


_QUESTION = re.compile(
    r"^Using the numbers \[(\d+(?:, \d+)*)\], make (\d+)\. "
    r"Use \+ - \* and each number exactly once\.$"
)


class CountdownTask:
    name = "countdown"
    system_prompt = ""
    # vote on what makes an answer right (its value and numbers), not on how it is written
    answer_rules = ("expression_value",)

    def sample(self, rng: random.Random) -> Problem:
        k = rng.randint(MIN_NUMBERS, MAX_NUMBERS)
        numbers = tuple(rng.randint(MIN_VALUE, MAX_VALUE) for _ in range(k))
        while True:
            e = random_expr(numbers, rng)
            if MIN_TARGET <= e.value <= MAX_TARGET:
                return Problem(numbers, e.value, format_expr(e))

    def problems(self, count: int, seed: int) -> list[Problem]:
        rng = random.Random(seed)
        return [self.sample(rng) for _ in range(count)]

    def reference(self, problem: Problem) -> str:
        """The steps of the generating expression, unless it passes through a negative
        number and a solver finds a way that does not (``35 - -8`` is harder to learn)."""
        e = parse_expression(problem.solution) if problem.solution else None
        if e is None or min(_values(e)) < 0:
            e = _solve(tuple(sorted(problem.numbers)), problem.target, True) or e
        if e is None:
            e = _solve(tuple(sorted(problem.numbers)), problem.target)
        if e is None:
            raise ValueError(f"no solution for {problem.question!r}")
        return "\n".join([*steps_of(e), f"The answer is {format_expr(e)}."])

    def check(self, problem: Problem, completion: str) -> bool:
        found = answer_line(completion)
        return found is not None and check_expression(problem, found)

    def check_step(self, problem: Problem, steps: Sequence[str], i: int) -> bool | None:
        return step_ok(problem, steps, i)

    def corrupt(self, problem: Problem, completion: str, rng: random.Random) -> str | None:
        """A near miss of a right completion, for hard negatives: a forged step (one operand
        of a step changed, its result kept, and the answer's literal with it), or one number
        of the answer swapped for another. None when the edit would still be right."""
        lines = completion.strip().splitlines()
        found = answer_line(completion)
        if found is None:
            return None
        steps = [i for i, line in enumerate(lines) if parse_step(line) is not None]
        literals = [m.start() for m in re.finditer(r"\d+", found)]
        if steps and rng.random() < 0.5:
            i = rng.choice(steps)
            a, op, b, c = parse_step(lines[i])  # type: ignore[misc]
            new_b = max(1, b + rng.choice((-2, -1, 1, 2)))
            lines[i] = f"{a} {op} {new_b} = {c}"
            found = re.sub(rf"(?<!\d){b}(?!\d)", str(new_b), found, count=1)
        elif literals:
            at = rng.choice(literals)
            end = at + len(re.match(r"\d+", found[at:]).group())  # type: ignore[union-attr]
            swap = rng.choice([v for v in range(MIN_VALUE, MAX_VALUE + 1)
                               if v != int(found[at:end])])
            found = found[:at] + str(swap) + found[end:]
        else:
            return None
        lines[-1] = f"The answer is {found}."
        text = "\n".join(lines)
        return None if self.check(problem, text) else text

    def partial_checks(self, problem: Problem, completion: str) -> dict[str, bool]:
        """Halves of the checker, for ``ceilings``: a verifier that checks only one of them."""
        found = answer_line(completion)
        try:
            e = parse_expression(found) if found is not None else None
        except ExpressionError:
            e = None
        return {
            "answer_value_only": e is not None and e.value == problem.target,
            "answer_numbers_only": e is not None
            and Counter(leaves(e)) == Counter(problem.numbers),
        }

    def parse(self, question: str) -> Problem | None:
        m = _QUESTION.match(question.strip())
        if not m:
            return None
        numbers = tuple(int(x) for x in m.group(1).split(", "))
        if not MIN_NUMBERS <= len(numbers) <= MAX_NUMBERS:
            return None
        return Problem(numbers, int(m.group(2)))
