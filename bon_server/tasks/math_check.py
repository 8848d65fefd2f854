r"""Checkers for a dataset's answers: is this completion right against this reference?

    math    (the default) math-verify, as Hugging Face's evaluations and TRL's accuracy reward
            use it: the completion's answer (the last ``\boxed{}`` first, then the last
            expression) and the reference are parsed with sympy and compared, so ``1,234``,
            ``\frac{2468}{2}`` and ``1234.0`` are one answer.
    exact   the completion's final answer (``The answer is ...`` or ``\boxed{}``, else the
            last number), normalized, equals the reference's normalized text.
    py:module:function   the user's own ``function(completion, reference) -> bool``.

A checker is ``checker(completion, reference) -> bool``, never raises for a bad completion, and
counts what went wrong in ``stats`` (``no_answer``, ``timeouts``, ``errors``): the commands print
them. ``check_reference(reference)`` says why a reference cannot be checked (None: it can), so a
dataset with one is refused when loaded, not half-way through a run.

math-verify bounds its time with ``signal.alarm``, which works only in a process's main thread.
There its timeouts stay on; in any other thread they are off and the text it reads is cut to
``bon_server.math_answers.window`` (the tail, or from the last ``\boxed`` on), its regexes being
super-linear on long adversarial text.
"""

from __future__ import annotations

import importlib
import threading
from collections import Counter
from collections.abc import Callable
from functools import cache
from typing import Any

from ..answers import boxed, final_line, last_number, normalize_answer

CHECKERS = ("math", "exact", "py:module:function")
TIMEOUT_S = 5  # math-verify's own default, per parse and per comparison (main thread only)
MAX_TEXT_CHARS = 2_000  # what math-verify reads of a completion outside the main thread


@cache
def _library() -> tuple[Any, tuple[Any, ...]]:
    import math_verify

    config = (math_verify.LatexExtractionConfig(boxed_match_priority=0),
              math_verify.ExprExtractionConfig())
    return math_verify, config


def _window(text: str) -> str:
    try:  # the server's math answer rule, where it exists: read what it reads
        from ..math_answers import window
    except ImportError:  # pragma: no cover - the rule ships beside this module
        return text if len(text) <= MAX_TEXT_CHARS else text[-MAX_TEXT_CHARS:]
    return window(text)


class MathChecker:
    """math-verify against a reference; references are parsed once and cached."""

    name = "math"

    def __init__(self) -> None:
        self.stats: Counter[str] = Counter()
        self._gold: dict[str, Any] = {}

    def _parse(self, text: str) -> list[Any]:
        mv, config = _library()
        if threading.current_thread() is threading.main_thread():
            return mv.parse(text, config, parsing_timeout=TIMEOUT_S, raise_on_error=True)
        return mv.parse(_window(text), config, parsing_timeout=None, raise_on_error=True)

    def gold(self, reference: str) -> list[Any]:
        if reference not in self._gold:
            try:
                # a bare reference ("1,234", "\frac{2468}{2}") reads as LaTeX math
                self._gold[reference] = self._parse(f"${reference}$") or self._parse(reference)
            except Exception:
                self._gold[reference] = []
        return self._gold[reference]

    def check_reference(self, reference: str) -> str | None:
        if not reference.strip():
            return "the reference is empty"
        gold = self.gold(reference)
        if not gold or isinstance(gold[0], str):  # found, but sympy could not read it
            return f"math-verify cannot parse the reference {reference!r}"
        return None

    def __call__(self, completion: str, reference: str) -> bool:
        from math_verify.utils import TimeoutException

        gold = self.gold(reference)
        if not gold:
            self.stats["unparsed_reference"] += 1
            return False
        try:
            pred = self._parse(completion)
            if not pred:
                self.stats["no_answer"] += 1
                return False
            mv, _ = _library()
            main = threading.current_thread() is threading.main_thread()
            return bool(mv.verify(gold, pred, timeout_seconds=TIMEOUT_S if main else None,
                                  raise_on_error=True))
        except TimeoutException:
            self.stats["timeouts"] += 1
        except Exception:
            self.stats["errors"] += 1
        return False


def final_answer(text: str) -> str | None:
    """A completion's final answer as text: ``The answer is ...``, else the last box, else the
    last number."""
    for rule in (final_line, boxed, last_number):
        found = rule(text)
        if found:
            return found
    return None


def _exact_key(text: str) -> str:
    key = normalize_answer(text.strip().strip("$"))
    return key.replace(",", "") if key.replace(",", "").replace(".", "").isdigit() else key


class ExactChecker:
    """The final answer's normalized text equals the reference's."""

    name = "exact"

    def __init__(self) -> None:
        self.stats: Counter[str] = Counter()

    def check_reference(self, reference: str) -> str | None:
        return "the reference is empty" if not reference.strip() else None

    def __call__(self, completion: str, reference: str) -> bool:
        found = final_answer(completion)
        if found is None:
            self.stats["no_answer"] += 1
            return False
        return _exact_key(found) == _exact_key(reference)


class PyChecker:
    """The user's ``function(completion, reference) -> bool``; what it raises counts as wrong."""

    def __init__(self, spec: str) -> None:
        self.name = spec
        _, module, function = spec.split(":", 2)
        self.function: Callable[[str, str], Any] = getattr(importlib.import_module(module),
                                                           function)
        self.stats: Counter[str] = Counter()

    def check_reference(self, reference: str) -> str | None:
        return None

    def __call__(self, completion: str, reference: str) -> bool:
        try:
            return bool(self.function(completion, reference))
        except Exception:
            self.stats["errors"] += 1
            return False


Checker = MathChecker | ExactChecker | PyChecker


def get_checker(spec: str) -> Checker:
    """``math``, ``exact`` or ``py:module:function``; fails by listing the valid ones."""
    if spec == "math":
        return MathChecker()
    if spec == "exact":
        return ExactChecker()
    if spec.startswith("py:"):
        if spec.count(":") != 2 or not all(spec.split(":")[1:]):
            raise ValueError(f"a py checker is py:module:function, not {spec!r}")
        try:
            return PyChecker(spec)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"cannot load the checker {spec!r}: {exc}") from None
    raise ValueError(f"unknown checker {spec!r}; valid checkers: {', '.join(CHECKERS)}")
