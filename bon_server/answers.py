"""Answer extraction and equivalence: pure functions, no I/O.

A *rule* turns a completion into its final answer string (or None). The majority
and weighted-majority selectors group candidates by ``normalize_answer`` of what
the first matching rule extracts; the arithmetic checker in
``bon_server.tasks.arith`` uses the same functions, so "correct" during
training and "same answer" during serving mean one thing.

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
from collections.abc import Callable, Sequence

AnswerRule = Callable[[str], "str | None"]

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
