r"""The ``math`` answer rule: answers read and compared as math-verify does.

math-verify (Hugging Face's; TRL's accuracy reward uses it) finds a completion's answer, the
last ``\boxed{}`` first (``LatexExtractionConfig(boxed_match_priority=0)``), then the last
expression (its own priorities: after "final answer is", after "answer", then anywhere;
``ExprExtractionConfig``), parses it with sympy, and says whether two answers are equal:
``\frac{1}{2}``, ``0.5`` and ``1/2`` are. This module only wraps the library (``parse`` and
``verify``, both ways); putting a request's candidates into classes by it is
``answers.AnswerGroups``'s job. It imports nothing from the project, and math-verify (with
sympy) only on first use.

Cost. math-verify bounds its own time with ``signal.alarm``, which works only in a process's
main thread; the server calls this rule from a worker thread with those timeouts off, so the
cost is bounded here instead:

    bounded      the text math-verify reads: ``MAX_TEXT_CHARS`` characters, the tail or from
                 the last ``\boxed`` on (its regexes are super-linear on adversarial text:
                 0.5 s at 2,000 characters, minutes at 16,000); which answers reach sympy's
                 comparison: one longer than ``MAX_ANSWER_CHARS``, or holding a number, power
                 or factorial past ``MAX_DIGITS`` digits (``9^{9^{9}}``, which sympy would
                 compute), is compared as its normalized text
    not bounded  one ``parse`` or one ``verify`` once started: no thread can interrupt sympy,
                 and parsing evaluates some things itself (``\binom{n}{k}``), so an answer
                 nobody foresaw can hold its worker thread (and share the GIL with the event
                 loop) until sympy returns. The per-request bounds (classes compared, seconds
                 spent) are ``AnswerGroups``'s; the pipeline stops waiting after a deadline.

A malformed answer never raises out of this rule: math-verify's own failures, sympy's and the
screens above all give a ``MathAnswer`` compared as text, with ``why`` saying so (the caller
counts and logs it).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

log = logging.getLogger(__name__)

MAX_TEXT_CHARS = 2_000  # what math-verify reads of a completion
MAX_ANSWER_CHARS = 200  # a longer answer is compared as text
MAX_DIGITS = 10_000  # a number sympy may have to build (9^10000 has 9,543 digits)
MAX_SYMBOLIC_EXPONENT = 100  # (x+1)^{100} expands; (x+1)^{10000} would take minutes
MAX_COMBINATORIAL_ARG = 1_000  # 1000! has 2,568 digits


@dataclass(frozen=True, slots=True)
class MathAnswer:
    """A completion's answer as math-verify read it."""

    text: str  # as written (math-verify's extracted string): the vote's key, normalized
    value: tuple[Any, ...] | None  # math-verify's parse; None: compared as text only
    why: str | None = None  # why it is compared as text (None: it is not)


@cache
def _library() -> tuple[Any, tuple[Any, ...]]:
    import math_verify

    config = (
        math_verify.LatexExtractionConfig(boxed_match_priority=0),
        math_verify.ExprExtractionConfig(),
    )
    return math_verify, config


def window(text: str) -> str:
    r"""What math-verify reads: the last ``MAX_TEXT_CHARS`` characters, or as many from the last
    ``\boxed`` on when that lies further back (the last box is the answer, wherever it is)."""
    if len(text) <= MAX_TEXT_CHARS:
        return text
    start = len(text) - MAX_TEXT_CHARS
    box = text.rfind("\\boxed")
    if 0 <= box < start:
        start = box
    return text[start : start + MAX_TEXT_CHARS]


class MathRule:
    """The ``math`` rule. ``fallback`` reads an answer as text without sympy (the last box,
    else the last number): what a completion math-verify failed on is compared by."""

    def __init__(self, fallback: Callable[[str], str | None]) -> None:
        self.fallback = fallback

    def __call__(self, text: str) -> str | None:
        """The answer's text, as any rule gives it (``extract_answer`` and offline tools)."""
        found = self.read(text)
        return None if found is None else found.text

    def read(self, text: str) -> MathAnswer | None:
        """The completion's answer, or None where math-verify finds none. Never raises."""
        try:
            mv, config = _library()
            parsed = mv.parse(window(text), config, parsing_timeout=None)
        except Exception as exc:  # math-verify catches its own errors; this is for the rest
            log.debug("math-verify could not read a completion", exc_info=True)
            found = self.fallback(text)
            return None if not found else MathAnswer(found, None, type(exc).__name__)
        if not parsed:
            return None
        value = parsed[0]
        written = next((p for p in parsed if isinstance(p, str) and p.strip()), None)
        if isinstance(value, str):  # found, but sympy could not read it
            return MathAnswer(value, None, "unparsed")
        if written is None:
            written = _printed(value)
            if written is None:
                return MathAnswer(self.fallback(text) or "?", None, "unprintable")
        if len(written) > MAX_ANSWER_CHARS:
            return MathAnswer(written, None, "long")
        if too_big(value):
            return MathAnswer(written, None, "too big")
        return MathAnswer(written, tuple(parsed))

    def same(self, a: MathAnswer, b: MathAnswer) -> bool:
        """math-verify's equality, asked both ways (``verify`` is not symmetric: it treats its
        first argument as the gold answer). Answers compared as text are never ``same`` here:
        equal texts are one vote before this is asked. Never raises."""
        if a.value is None or b.value is None:
            return False
        try:
            mv, _ = _library()
            x, y = list(a.value), list(b.value)
            return bool(
                mv.verify(x, y, timeout_seconds=None) and mv.verify(y, x, timeout_seconds=None)
            )
        except Exception:  # verify catches its own errors; this is for the rest
            log.debug("math-verify could not compare two answers", exc_info=True)
            return False


def _printed(value: Any) -> str | None:
    try:
        printed = str(value)
    except Exception:  # an Integer past Python's str limit, a printer's failure
        return None
    return printed if printed.strip() else None


def too_big(value: Any) -> bool:
    """Whether comparing ``value`` could make sympy build a number past ``MAX_DIGITS`` digits,
    or expand a power past ``MAX_SYMBOLIC_EXPONENT``. A value this cannot judge counts as big."""
    try:
        return _big(value)
    except Exception:
        return True


def _big(expr: Any) -> bool:
    import sympy
    from sympy.functions import combinatorial as comb

    if isinstance(expr, sympy.MatrixBase):
        return any(_big(x) for x in expr)
    if not isinstance(expr, sympy.Basic):
        return False
    if isinstance(expr, sympy.Rational):  # Integer included
        bits = MAX_DIGITS * math.log2(10)
        return max(abs(expr.p).bit_length(), expr.q.bit_length()) > bits
    if any(_big(arg) for arg in expr.args):  # children first: evaluating them below is cheap
        return True
    if isinstance(expr, sympy.Pow):
        base, exponent = expr.args
        if exponent.free_symbols:
            return False
        e = abs(complex(exponent.evalf(30)))
        if base.free_symbols:
            return e > MAX_SYMBOLIC_EXPONENT
        b = abs(complex(base.evalf(30)))
        # (1/2)^{-10^5} is as big as 2^{10^5}
        return b not in (0.0, 1.0) and e * abs(math.log10(b)) > MAX_DIGITS
    combinatorial = (
        comb.factorials.factorial,
        comb.factorials.factorial2,
        comb.factorials.subfactorial,
        comb.factorials.binomial,
        comb.factorials.RisingFactorial,
        comb.factorials.FallingFactorial,
        sympy.gamma,
    )
    if isinstance(expr, combinatorial):
        return any(
            not arg.free_symbols and abs(complex(arg.evalf(30))) > MAX_COMBINATORIAL_ARG
            for arg in expr.args
        )
    return False
