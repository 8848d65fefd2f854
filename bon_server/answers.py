"""Answer extraction and equivalence: pure functions, no I/O.

A *rule* turns a completion into its final answer string (or None). ``AnswerGroups`` is
THE place a request's candidates become votes: it gives each candidate its answer's key, and
the majority and weighted-majority selectors, adaptive's stopping rule, the response's
``answer`` and the candidate page's vote bars all group by that key (``tally``). A text rule's
key is ``normalize_answer`` of what the first matching rule extracts; the arithmetic checker in
``bon_server.tasks.arith`` uses the same functions, so "correct" during training and "same
answer" during serving mean one thing. A *pairwise* rule (``math``: math-verify, in
``math_answers``) says when two answers are equal, and ``AnswerGroups`` puts them in classes.

Each world names its rules (``Task.answer_rules``) and registers any of its own with
``register_rule`` when its module is imported (``bon_server.tasks`` imports every world;
this module imports none): Countdown's ``expression_value`` votes by an expression's value
and numbers, so that every right answer to a problem is one answer. The server takes the
served world's rules unless ``--answer-rules`` says otherwise.

Rules are looked up by name in ``ANSWER_RULES``; unknown names fail by listing
the valid ones.
"""

from __future__ import annotations

import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from .math_answers import MathRule

AnswerRule = Callable[[str], "str | None"]


class ReadAnswer(Protocol):
    @property
    def text(self) -> str: ...  # the answer as written: its key, once normalized

    @property
    def why(self) -> str | None: ...  # why it is compared as text only (None: it is not)


@runtime_checkable
class PairwiseRule(Protocol):
    """A rule whose answers are one vote when ``same`` says so, not when their texts match.

    ``read`` and ``same`` never raise; ``fallback`` reads an answer as text, cheaply (no
    sympy), for when the pairwise comparison is given up for a whole request."""

    def __call__(self, text: str) -> str | None: ...
    def read(self, text: str) -> ReadAnswer | None: ...
    def same(self, a: Any, b: Any) -> bool: ...
    def fallback(self, text: str) -> str | None: ...

_FINAL_LINE = re.compile(r"^\s*The answer is\s+(.+?)\.?\s*$")


def final_line(text: str) -> str | None:
    """The arithmetic world's answer: the last non-empty line, `The answer is N.`"""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return None
    match = _FINAL_LINE.match(lines[-1])
    return match.group(1).strip() if match else None


def boxed(text: str) -> str | None:
    r"""The content of the last ``\boxed{...}``, with nested braces balanced."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i = start + len("\\boxed{")
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j].strip()
    return None


_LAST_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_number(text: str) -> str | None:
    """The last number in the text: a loose fallback for free-form answers."""
    found = _LAST_NUMBER.findall(text)
    return found[-1] if found else None


ANSWER_RULES: dict[str, AnswerRule] = {
    "final_line": final_line,
    "boxed": boxed,
    "last_number": last_number,
    # math-verify's reading and equality (the last \boxed, else the last expression); where
    # it fails, the last box or number as text
    "math": MathRule(fallback=lambda text: boxed(text) or last_number(text)),
}
DEFAULT_RULES: tuple[str, ...] = ("final_line", "boxed")


def register_rule(name: str, rule: AnswerRule) -> AnswerRule:
    """Add a world's own rule to ``ANSWER_RULES`` (the world's module calls this on import, so
    this module never imports a world). Registering a name twice with another rule is refused."""
    if ANSWER_RULES.get(name, rule) is not rule:
        raise ValueError(f"answer rule {name!r} is already registered")
    ANSWER_RULES[name] = rule
    return rule


def check_rules(names: Sequence[str]) -> tuple[str, ...]:
    """Validate rule names; raise ValueError listing the valid ones."""
    unknown = [n for n in names if n not in ANSWER_RULES]
    if unknown or not names:
        valid = ", ".join(sorted(ANSWER_RULES))
        raise ValueError(f"unknown answer rule(s) {unknown or names!r}; valid rules: {valid}")
    return tuple(names)


def extract_answer(text: str, rules: Sequence[str] = DEFAULT_RULES) -> str | None:
    """The answer of the first rule that finds one, normalized; None if none does."""
    for name in rules:
        found = ANSWER_RULES[name](text)
        if found:
            return normalize_answer(found)
    return None


_NUMERIC = re.compile(r"^[+-]?\d+(?:\.\d+)?$")


def normalize_answer(answer: str) -> str:
    """Canonical form: strip spaces, `$`, thousands separators; numbers in canonical form."""
    s = answer.strip().strip("$").strip()
    s = s.replace(" ", "")
    if _NUMERIC.match(s.replace(",", "")):
        s = s.replace(",", "")
        if "." in s:
            value = float(s)
            return str(int(value)) if value.is_integer() else repr(value)
        return str(int(s))
    return s


def answers_equal(a: str | None, b: str | None) -> bool:
    """Equivalence after normalization; a missing answer equals nothing."""
    if a is None or b is None:
        return False
    return normalize_answer(a) == normalize_answer(b)


def tally(answers: Sequence[str | None], weights: Sequence[float]) -> dict[str, float]:
    """The votes: each answer key's summed weight (no answer: no vote), in order of first
    appearance. Every vote count in the server is this over ``AnswerGroups``' keys."""
    totals: dict[str, float] = defaultdict(float)
    for answer, w in zip(answers, weights, strict=True):
        if answer is not None:
            totals[answer] += w
    return dict(totals)


@dataclass(slots=True)
class _Group:
    key: str
    rule: PairwiseRule | None  # the pairwise rule that read the first member (None: text)
    answer: Any  # what that rule read


class AnswerGroups:
    """One request's candidates as votes: each candidate's answer key (None: no answer), such
    that two candidates hold the same key exactly when they are one vote.

    Text rules: the key is ``extract_answer``'s (the first rule that finds an answer,
    normalized), as it always was. A pairwise rule (``math``): equality is the rule's, not the
    text's, and it is not a key, so candidates are put in classes greedily, in the order they
    come: each joins the first class whose key equals its own normalized text, or whose first
    member ``rule.same`` says it equals, else it starts a class; every member takes its class's
    key (the first member's text). Candidates added later (adaptive's next waves) join the
    classes already there, so a key once given never changes.

    Bounded: a candidate is compared with at most ``max_compared`` classes, and one request
    spends at most ``budget_s`` seconds in the pairwise rule (reading and comparing); past
    either, answers are compared by key (their normalized text; past the budget they are read
    by the rule's cheap ``fallback``). Each answer so compared is counted in ``fallbacks``, by
    reason (with the rule's own: unparsed, long, too big). Not bounded: one ``read`` or ``same``
    once started (see ``math_answers``). Not thread-safe: a request's groups serve one task at
    a time (the pipeline runs ``add`` in a worker thread and awaits it).
    """

    def __init__(
        self, rules: Sequence[str] = DEFAULT_RULES, *, max_compared: int = 32, budget_s: float = 2.0
    ) -> None:
        self.rules = check_rules(rules)
        # each rule, and itself again where it is pairwise (a runtime Protocol check is slow)
        self._rules: list[tuple[AnswerRule, PairwiseRule | None]] = [
            (rule, rule if isinstance(rule, PairwiseRule) else None)
            for rule in (ANSWER_RULES[name] for name in self.rules)
        ]
        self.max_compared = max_compared
        self.budget_s = budget_s
        self.fallbacks: Counter[str] = Counter()
        self._groups: dict[str, _Group] = {}
        self._spent_s = 0.0

    @property
    def pairwise(self) -> bool:
        """Whether a rule compares pairwise (then ``add`` may be slow: keep it off the loop)."""
        return any(pair is not None for _, pair in self._rules)

    def add(self, texts: Sequence[str]) -> list[str | None]:
        """The keys of these candidates, grouped with every candidate added before."""
        return [self._add(text) for text in texts]

    def as_text(self, texts: Sequence[str]) -> list[str | None]:
        """Keys by text alone, pairwise rules read by their ``fallback``: what a request votes
        by once its pairwise grouping is given up. Stateless and cheap."""
        return [self._text_key(text) for text in texts]

    def _text_key(self, text: str) -> str | None:
        for rule, pair in self._rules:
            found = rule(text) if pair is None else pair.fallback(text)
            if found:
                return normalize_answer(found)
        return None

    def _add(self, text: str) -> str | None:
        for rule, pair in self._rules:
            if pair is None:
                found = rule(text)
                if found:
                    return self._join(normalize_answer(found), None, None)
                continue
            if self._spent_s >= self.budget_s:
                found = pair.fallback(text)
                if found:
                    self.fallbacks["budget"] += 1
                    return self._join(normalize_answer(found), None, None)
                continue
            t0 = time.perf_counter()
            read = pair.read(text)
            self._spent_s += time.perf_counter() - t0
            if read is None or not read.text.strip():
                continue
            if read.why is not None:
                self.fallbacks[read.why] += 1
            return self._join(normalize_answer(read.text), pair, read)
        return None

    def _join(self, key: str, pair: PairwiseRule | None, read: ReadAnswer | None) -> str:
        if key in self._groups:
            return key
        if pair is not None and read is not None and read.why is None:
            comparable = [
                g for g in self._groups.values() if g.rule is pair and g.answer.why is None
            ]
            for group in comparable[: self.max_compared]:
                if self._spent_s >= self.budget_s:
                    self.fallbacks["budget"] += 1
                    break
                t0 = time.perf_counter()
                same = pair.same(group.answer, read)
                self._spent_s += time.perf_counter() - t0
                if same:
                    return group.key
            else:
                if len(comparable) > self.max_compared:
                    self.fallbacks["max_compared"] += 1
        self._groups[key] = _Group(key, pair, read)
        return key
