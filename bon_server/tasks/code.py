"""A small code world: write a Python function from examples of what it returns.

A problem: a hidden integer function of one argument ``x`` or two ``x, y``, a composition of
``+ - * // %`` with small constants; the prompt shows four of its input/output pairs as
asserts, the base cases first (``x`` = 0 and 1; ``x, y`` = 0, 0 and 0, 1), then two drawn
inputs, exactly::

    Write a Python function g(x) that passes these tests:
    assert g(0) == 4
    assert g(1) == 7
    assert g(11) == 37
    assert g(17) == 55

A completion is right when its program (``bon_server.sandbox.extract_program``: the last
fenced block, else the whole text) passes every HIDDEN test in the sandbox: the same function
at inputs the prompt does not show, several of them outside the shown range and negative
(``x // a`` and ``x % a`` floor there). The reference solution, what the policy is trained on::

    ```python
    def g(x):
        return x * 3 + 4
    ```

The grammar (``functions(arity)``, in the order they are preferred):

    one argument    x OP a,  (x OP a) OP b       a, b: 1..9 for + -, 2..9 for * // %
    two arguments   x OP y   (OP in + - *),  (x OP y) OP a

printed with only the parentheses Python needs. Hidden tests, and why ``parse`` can rebuild
them. The prompt holds only the shown examples, never the function nor a seed that encodes it.
The hidden inputs are FIXED (``HIDDEN_INPUTS``, the same for every problem of an arity), and
a problem is kept only when the shown examples pin the function down within the grammar: every
function of the grammar that fits them gives the same outputs at every hidden input. So the
hidden tests are a function of the prompt alone, and ``parse`` rebuilds them by search (an
index from (input, output) to the functions through it: a few bit operations). The canonical
function, the answer and the reference, is the first of the grammar that fits the examples, so
a drawn ``(x + 2) + 3`` is taught as ``x + 5`` (and ``x + 10``, past the constants, as the
grammar's first way to write it, ``x + 1 + 9``; ``x`` itself is never a problem). A prompt
of this shape whose examples fit no function of the grammar, or fit two that disagree somewhere
hidden, parses to None: its hidden tests would not be determined.

Votes (``answer_rules``): the ``program`` rule, the extracted program's text with blank lines
and trailing spaces dropped (and, as every key is normalised, spaces). Two programs that
behave alike but read differently are two answers here; voting by behaviour is the server's.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

from ..answers import register_rule

NAMES: tuple[str, ...] = ("f", "g", "h")
OPS: tuple[str, ...] = ("+", "-", "*", "//", "%")
PAIR_OPS: tuple[str, ...] = ("+", "-", "*")  # between x and y: never a division by y
CONSTANTS: dict[str, range] = {"+": range(1, 10), "-": range(1, 10), "*": range(2, 10),
                               "//": range(2, 10), "%": range(2, 10)}
VISIBLE = 4  # examples shown in a prompt (parse takes 3..6)
# every prompt shows the base cases first, then two inputs drawn from the rest of the domain
# (with four drawn inputs, a 1.2M-parameter policy was still guessing the constants, a loss
# of ln 9, after 200 steps: inferring ``a`` from ``f(13) == 22`` is subtraction, from
# ``f(0) == 9`` a copy)
ANCHORS: dict[int, tuple[tuple[int, ...], ...]] = {1: ((0,), (1,)), 2: ((0, 0), (0, 1))}
# the shown inputs: x in 0..20 (one argument), x, y in 0..12 (two)
DOMAIN: dict[int, tuple[tuple[int, ...], ...]] = {
    1: tuple((x,) for x in range(21)),
    2: tuple((x, y) for x in range(13) for y in range(13)),
}
HIDDEN_INPUTS: dict[int, tuple[tuple[int, ...], ...]] = {
    1: ((-7,), (-2,), (23,), (31,), (46,), (64,), (99,)),
    2: ((-3, 5), (4, -6), (15, 2), (17, 13), (25, 31), (40, 7)),
}
ARITY_2_PROB = 0.3  # share of two-argument problems
# share of problems drawn with two operations (before canonicalising): at 0.5 a 1.2M-parameter
# policy after 300 steps had learned which operation but guessed every constant
TWO_OPS_PROB = 0.35
PREC = {"+": 1, "-": 1, "*": 2, "//": 2, "%": 2}
REDRAWS = 8  # shown inputs tried for a drawn function before another function is drawn


@dataclass(frozen=True, slots=True)
class Fn:
    """``x``, then each ``(op, operand)`` applied left to right; an operand is an int or "y"."""

    arity: int
    steps: tuple[tuple[str, int | str], ...]

    def __call__(self, *args: int) -> int:
        acc = args[0]
        for op, operand in self.steps:
            b = args[1] if operand == "y" else operand
            assert isinstance(b, int)
            acc = (acc + b if op == "+" else acc - b if op == "-" else acc * b if op == "*"
                   else acc // b if op == "//" else acc % b)
        return acc

    @property
    def expression(self) -> str:
        """Python source with only the parentheses precedence needs: ``(x + 3) * 2``."""
        text, last = "x", None
        for op, operand in self.steps:
            if last is not None and PREC[last] < PREC[op]:
                text = f"({text})"
            text, last = f"{text} {op} {operand}", op
        return text

    def source(self, name: str) -> str:
        args = "x" if self.arity == 1 else "x, y"
        return f"def {name}({args}):\n    return {self.expression}"


@cache
def functions(arity: int) -> tuple[Fn, ...]:
    """The grammar, in order of preference (fewer operations first, then ``OPS`` order,
    then smaller constants)."""
    one = [(op, a) for op in OPS for a in CONSTANTS[op]]
    if arity == 1:
        return (tuple(Fn(1, (s,)) for s in one)
                + tuple(Fn(1, (s, t)) for s in one for t in one))
    pairs = [(op, "y") for op in PAIR_OPS]
    return tuple(Fn(2, (p,)) for p in pairs) + tuple(Fn(2, (p, t)) for p in pairs for t in one)


@cache
def _index(arity: int) -> dict[tuple[tuple[int, ...], int], int]:
    """(shown input, output) -> the bit set of the grammar's functions through that point."""
    index: dict[tuple[tuple[int, ...], int], int] = {}
    for i, fn in enumerate(functions(arity)):
        for args in DOMAIN[arity]:
            key = (args, fn(*args))
            index[key] = index.get(key, 0) | 1 << i
    return index


@cache
def _hidden_outputs(arity: int, i: int) -> tuple[int, ...]:
    fn = functions(arity)[i]
    return tuple(fn(*args) for args in HIDDEN_INPUTS[arity])


def canonical(arity: int, inputs: Sequence[tuple[int, ...]],
              outputs: Sequence[int]) -> Fn | None:
    """The first function of the grammar through these examples, if every function through
    them agrees with it on the hidden inputs; else None (none fits, or the hidden tests would
    not be determined)."""
    index = _index(arity)
    fits = -1
    for args, out in zip(inputs, outputs, strict=True):
        fits &= index.get((tuple(args), out), 0)
        if not fits:
            return None
    first = (fits & -fits).bit_length() - 1
    hidden = _hidden_outputs(arity, first)
    rest = fits & (fits - 1)
    while rest:
        i = (rest & -rest).bit_length() - 1
        if _hidden_outputs(arity, i) != hidden:
            return None
        rest &= rest - 1
    return functions(arity)[first]


def _call(name: str, args: Sequence[int]) -> str:
    return f"{name}({', '.join(str(a) for a in args)})"


@dataclass(frozen=True, slots=True)
class Problem:
    name: str
    fn: Fn  # the canonical function: the first of the grammar through the examples
    inputs: tuple[tuple[int, ...], ...]  # the shown examples' inputs, in prompt order

    @property
    def arity(self) -> int:
        return self.fn.arity

    @property
    def question(self) -> str:
        args = "x" if self.arity == 1 else "x, y"
        return (f"Write a Python function {self.name}({args}) that passes these tests:\n"
                + "\n".join(self.visible_tests))

    @property
    def answer(self) -> str:
        """The canonical function's source (records, votes)."""
        return self.fn.source(self.name)

    @property
    def visible_tests(self) -> list[str]:
        return [f"assert {_call(self.name, a)} == {self.fn(*a)}" for a in self.inputs]

    @property
    def hidden_tests(self) -> list[str]:
        return [f"assert {_call(self.name, a)} == {self.fn(*a)}"
                for a in HIDDEN_INPUTS[self.arity]]


def visible_tests(problem: Problem) -> list[str]:
    return problem.visible_tests


def hidden_tests(problem: Problem) -> list[str]:
    return problem.hidden_tests


def _identity(fn: Fn) -> bool:
    """``x`` itself (the grammar's first way to write it is ``x + 1 - 1``): not a problem."""
    return fn.arity == 1 and all(fn(*a) == a[0] for a in DOMAIN[1] + HIDDEN_INPUTS[1])


def _draw_fn(rng: random.Random, arity: int) -> Fn:
    def step() -> tuple[str, int]:
        op = rng.choice(OPS)
        return op, rng.choice(CONSTANTS[op])

    first: tuple[str, int | str] = step() if arity == 1 else (rng.choice(PAIR_OPS), "y")
    more = rng.random() < TWO_OPS_PROB
    return Fn(arity, (first, step()) if more else (first,))


def sample_problem(rng: random.Random) -> Problem:
    """A drawn function and shown inputs (the base cases ``ANCHORS``, then two distinct drawn
    ones, sorted), kept when the examples determine the hidden tests, are not all one value and
    are not ``x`` itself; the problem holds the canonical function."""
    while True:
        name = rng.choice(NAMES)
        arity = 2 if rng.random() < ARITY_2_PROB else 1
        drawn = _draw_fn(rng, arity)
        for _ in range(REDRAWS):
            rest = [a for a in DOMAIN[arity] if a not in ANCHORS[arity]]
            inputs = ANCHORS[arity] + tuple(sorted(rng.sample(rest, VISIBLE - 2)))
            outputs = [drawn(*a) for a in inputs]
            if len(set(outputs)) == 1:
                continue
            fn = canonical(arity, inputs, outputs)
            if fn is not None and not _identity(fn):
                return Problem(name, fn, inputs)


def sample_problems(n: int, seed: int) -> list[Problem]:
    rng = random.Random(seed)
    return [sample_problem(rng) for _ in range(n)]


_QUESTION = re.compile(
    r"Write a Python function ([A-Za-z_]\w*)\((x|x, y)\) that passes these tests:"
    r"((?:\nassert \w+\(-?\d+(?:, -?\d+)?\) == -?\d+)+)")
_TEST = re.compile(r"assert (\w+)\((-?\d+)(?:, (-?\d+))?\) == (-?\d+)")


def parse_question(text: str) -> Problem | None:
    """The inverse of ``Problem.question`` (the hidden tests rebuilt by ``canonical``); None
    for a text of another shape, or whose examples do not determine the hidden tests."""
    m = _QUESTION.fullmatch(text.strip())
    if not m:
        return None
    name, arity = m[1], 1 if m[2] == "x" else 2
    inputs, outputs = [], []
    for line in m[3].strip().splitlines():
        t = _TEST.fullmatch(line)
        if t is None or t[1] != name or (t[3] is None) != (arity == 1):
            return None
        inputs.append(tuple(int(v) for v in t.group(2, 3) if v is not None))
        outputs.append(int(t[4]))
    if not 3 <= len(inputs) <= 6 or len(set(inputs)) != len(inputs):
        return None
    fn = canonical(arity, inputs, outputs)
    if fn is None:
        return None
    problem = Problem(name, fn, tuple(inputs))
    # the exact text only (no leading zeros, no "+3"): parse(question).question == question
    return problem if problem.question == text.strip() else None


# ------------------------------------------------------------------ checking, in the sandbox


@lru_cache(maxsize=65536)
def _report(program: str, tests: tuple[str, ...]) -> Any:
    """The sandbox's report on ``tests`` run after ``program``. Cached: a policy's samples
    repeat the same programs, and a test run of a program is a pure function of both."""
    from ..sandbox import run_tests_sync

    return run_tests_sync(program, tests)


def report_of(program: str, tests: Sequence[str]) -> Any:
    """``sandbox.run_tests_sync``'s ``TestReport`` (cached)."""
    return _report(program, tuple(tests))


def passes(program: str, tests: Sequence[str]) -> bool:
    """Every one of ``tests`` passes after ``program`` (and there is one)."""
    report = report_of(program, tests)
    return report.total > 0 and report.passed == report.total


def program_of(completion: str) -> str:
    from ..sandbox import extract_program

    return extract_program(completion)


def program_key(text: str) -> str | None:
    """The ``program`` answer rule: the extracted program, blank lines and trailing spaces
    dropped (None: no program)."""
    lines = [line.rstrip() for line in program_of(text).splitlines() if line.strip()]
    return "\n".join(lines) or None


register_rule("program", program_key)


def fenced(source: str) -> str:
    return f"```python\n{source}\n```"


class CodeTask:
    """The code world as a ``Task``."""

    name = "code"
    system_prompt = "You are a helpful assistant that writes correct Python code."
    answer_rules = ("program",)

    def sample(self, rng: random.Random) -> Problem:
        return sample_problem(rng)

    def problems(self, count: int, seed: int) -> list[Problem]:
        return sample_problems(count, seed)

    def reference(self, problem: Problem) -> str:
        return fenced(problem.answer)

    def check(self, problem: Problem, completion: str) -> bool:
        return passes(program_of(completion), problem.hidden_tests)

    def check_step(self, problem: Problem, steps: Sequence[str], i: int) -> bool | None:
        return None  # a program is not checked line by line

    def partial_checks(self, problem: Problem, completion: str) -> dict[str, bool]:
        """For ``ceilings``: a verifier that knows only the tests the prompt shows."""
        return {"visible_tests": passes(program_of(completion), problem.visible_tests)}

    def corrupt(self, problem: Problem, completion: str, rng: random.Random) -> str | None:
        """A near miss: one constant of the program's ``return`` line moved by 1 or 2 (None
        when there is none, or the edit still passes)."""
        lines = completion.splitlines()
        at = [i for i, line in enumerate(lines) if line.strip().startswith("return ")]
        if not at:
            return None
        i = at[-1]
        numbers = list(re.finditer(r"(?<![\w.])\d+", lines[i]))
        if not numbers:
            return None
        n = rng.choice(numbers)
        new = max(1, int(n[0]) + rng.choice((-2, -1, 1, 2)))
        lines[i] = lines[i][: n.start()] + str(new) + lines[i][n.end():]
        text = "\n".join(lines)
        return None if text == completion or self.check(problem, text) else text

    def parse(self, question: str) -> Problem | None:
        return parse_question(question)
