"""Answer extraction rules, their order, normalization and equivalence."""

from __future__ import annotations

import pytest

import bon_server.tasks  # noqa: F401  (registers the worlds' own answer rules)
from bon_server.answers import (
    ANSWER_RULES,
    DEFAULT_RULES,
    answers_equal,
    boxed,
    check_rules,
    extract_answer,
    final_line,
    last_number,
    normalize_answer,
    tally,
)

# ------------------------------------------------------------------ final_line


@pytest.mark.parametrize(
    "text, expected",
    [
        ("= 5\nThe answer is 5.", "5"),
        ("The answer is -12.", "-12"),
        ("The answer is 3.5.", "3.5"),  # the decimal point survives, only the final dot goes
        ("The answer is 42", "42"),  # the closing period is optional
        ("work\nThe answer is 7.\n\n   \n", "7"),  # trailing blank lines are skipped
        ("  The answer is 9.  ", "9"),
    ],
)
def test_final_line_reads_the_last_nonempty_line(text, expected):
    assert final_line(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n\n",
        "The answer is 5.\nbut then I kept talking",  # only the LAST line counts
        "I think the answer is 5.",  # must start the line
        "The answer is",
    ],
)
def test_final_line_none(text):
    assert final_line(text) is None


# ------------------------------------------------------------------ boxed


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so \boxed{5}", "5"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),  # nested braces balanced
        (r"\boxed{{a}{b{c}}} tail }", "{a}{b{c}}"),
        (r"first \boxed{1} then \boxed{ 2 }", "2"),  # the last one, stripped
    ],
)
def test_boxed(text, expected):
    assert boxed(text) == expected


@pytest.mark.parametrize("text", ["no box here", r"\boxed{unclosed {brace}", r"\boxed 5"])
def test_boxed_none(text):
    assert boxed(text) is None


# ------------------------------------------------------------------ last_number


@pytest.mark.parametrize(
    "text, expected",
    [
        ("3 apples and 4 pears", "4"),
        ("it costs 1,000 dollars", "1,000"),
        ("temperature -7 today", "-7"),
        ("pi is 3.14", "3.14"),
    ],
)
def test_last_number(text, expected):
    assert last_number(text) == expected


def test_last_number_none():
    assert last_number("no digits at all") is None


# ------------------------------------------------------------------ extract_answer


def test_default_rules_are_final_line_then_boxed():
    assert DEFAULT_RULES == ("final_line", "boxed")
    assert set(ANSWER_RULES) == {
        "final_line", "boxed", "last_number", "math", "expression_value", "program",
    }


def test_tally_sums_weights_per_key_in_order_of_first_appearance():
    assert tally(["5", None, "6", "5"], [0.5, 9.0, 0.25, 1.0]) == {"5": 1.5, "6": 0.25}
    assert list(tally(["b", "a", "b"], [1, 1, 1])) == ["b", "a"]
    assert tally([None], [1.0]) == {}


def test_extract_answer_first_matching_rule_wins():
    text = "\\boxed{3}\nThe answer is 4."
    assert extract_answer(text) == "4"
    assert extract_answer(text, ("boxed", "final_line")) == "3"
    assert extract_answer(text, ("last_number",)) == "4"


def test_extract_answer_falls_through_to_later_rules():
    assert extract_answer("so \\boxed{8} is it") == "8"
    assert extract_answer("maybe 12 or 13") is None  # last_number is not a default rule
    assert extract_answer("maybe 12 or 13", ("final_line", "boxed", "last_number")) == "13"


def test_extract_answer_skips_a_rule_that_finds_an_empty_answer():
    assert extract_answer("\\boxed{}\n", ("boxed", "last_number")) is None
    assert extract_answer("x = 6 \\boxed{}", ("boxed", "last_number")) == "6"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The answer is +5.", "5"),
        ("The answer is 5.0.", "5"),
        ("The answer is 1,000.", "1000"),
        ("The answer is -7.", "-7"),
        ("The answer is $5.", "5"),
        ("The answer is 2.50.", "2.5"),
        ("The answer is 1,234.5.", "1234.5"),
        ("The answer is 007.", "7"),
        ("The answer is x + 1.", "x+1"),  # non-numbers: spaces removed, kept as text
    ],
)
def test_extract_answer_normalizes(text, expected):
    assert extract_answer(text) == expected


def test_normalize_answer_forms_agree():
    forms = ["5", "+5", "5.0", " $5 ", "5.00"]
    assert {normalize_answer(f) for f in forms} == {"5"}
    assert normalize_answer("-0.5") == "-0.5"
    assert normalize_answer("1,000,000") == "1000000"


# ------------------------------------------------------------------ answers_equal


def test_answers_equal():
    assert answers_equal("5", "5.0")
    assert answers_equal("1,000", "1000")
    assert answers_equal("$5", "+5")
    assert not answers_equal("5", "6")
    assert not answers_equal("-5", "5")


def test_answers_equal_none_equals_nothing():
    assert not answers_equal(None, "5")
    assert not answers_equal("5", None)
    assert not answers_equal(None, None)


# ------------------------------------------------------------------ check_rules


def test_check_rules_accepts_known_names():
    assert check_rules(["boxed", "last_number"]) == ("boxed", "last_number")


@pytest.mark.parametrize("names", [["boxed", "nope"], []])
def test_check_rules_lists_valid_names(names):
    with pytest.raises(ValueError) as info:
        check_rules(names)
    message = str(info.value)
    assert "boxed, expression_value, final_line, last_number" in message
    if names:
        assert "nope" in message


# ------------------------------------------------------------------ Countdown's vote


def _countdown(expression: str) -> str | None:
    return extract_answer(f"12 - 7 = 5\nThe answer is {expression}.", ("expression_value",))


def test_expression_value_makes_every_way_of_writing_one_answer_one_vote():
    same = {_countdown(e) for e in ("(12 - 7) * 3 + 1", "1 + 3 * (12 - 7)",
                                    "3*(12-7)+1", "((12 - 7) * 3) + 1")}
    assert same == {"[1,3,7,12]->16"}


@pytest.mark.parametrize("other", [
    "(12 - 7) * 3 + 2",      # another value
    "12 - 7 * 3 + 1",        # the same numbers, precedence: -8
    "(11 - 7) * 4",          # same value, other numbers
    "(12 - 7) * 3 + 1 + 0",  # one number more
])
def test_expression_value_keeps_other_answers_apart(other):
    assert _countdown(other) != _countdown("(12 - 7) * 3 + 1")


@pytest.mark.parametrize("junk", ["-3 + 19", "16", "(12 - 7", "twelve", "1 + " * 80 + "1"])
def test_expression_value_falls_back_to_the_text_the_checker_refuses(junk):
    # "16" parses (a one-number expression); the rest are refused and vote as text
    found = _countdown(junk)
    if junk == "16":
        assert found == "[16]->16"
    else:
        assert found == normalize_answer(junk)


def test_expression_value_without_an_answer_line_is_none():
    assert extract_answer("12 - 7 = 5", ("expression_value",)) is None


@pytest.mark.parametrize("module", ["bon_server.config", "verifier_training.evaluate.adaptive"])
def test_what_takes_rule_names_knows_every_worlds_rules(module):
    """A world registers its own rules when imported (answers imports no world): each module
    that checks ``--answer-rules`` names must load the worlds itself, in a fresh interpreter."""
    import subprocess
    import sys

    code = (f"import {module}; from bon_server.answers import ANSWER_RULES; "
            "print(sorted(ANSWER_RULES))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "expression_value" in out
