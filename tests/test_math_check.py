"""The dataset checkers: math-verify (equivalent forms are one answer, others are not), exact,
and the user's own py:module:function; errors are counted, never raised."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from bon_server.tasks.math_check import get_checker

EQUIVALENT = [  # (reference, completion)
    ("1,234", "12 * 100 = 1200\nThe answer is 1234."),
    ("\\frac{2468}{2}", "The answer is 1234."),
    ("1234.0", "So the total is \\boxed{1234}."),
    ("\\frac{1}{2}", "The answer is 0.5."),
    ("0.5", "Therefore the answer is $\\frac{1}{2}$."),
    ("-49", "21 - 70 = -49\nThe answer is -49."),
    ("x^2+2x+1", "It factors: $\\boxed{(x+1)^2}$"),
]
DIFFERENT = [
    ("1,234", "The answer is 1235."),
    ("\\frac{1}{2}", "The answer is 2."),
    ("-49", "The answer is 49."),
    ("1234", "I do not know."),
]


@pytest.mark.parametrize(("reference", "completion"), EQUIVALENT)
def test_math_verify_accepts_equivalent_forms(reference, completion):
    check = get_checker("math")
    assert check(completion, reference) is True
    assert check.check_reference(reference) is None


@pytest.mark.parametrize(("reference", "completion"), DIFFERENT)
def test_math_verify_refuses_other_answers(reference, completion):
    assert get_checker("math")(completion, reference) is False


def test_math_counts_no_answer_and_refuses_an_unparsable_reference():
    check = get_checker("math")
    assert check("nothing here", "3") is False and check.stats["no_answer"] == 1
    assert check.check_reference("") is not None
    assert "cannot parse" in check.check_reference("\\frac{")


def test_math_in_a_worker_thread_runs_without_signal_timeouts():
    """signal.alarm works only in the main thread: off the main thread the checker turns
    math-verify's timeouts off (and reads a bounded window) instead of failing."""
    check = get_checker("math")
    long = "blah " * 5000 + "The answer is 1234."
    out: list[bool] = []
    worker = threading.Thread(target=lambda: out.extend([check(long, "1,234"),
                                                         check("The answer is 7.", "1234")]))
    worker.start()
    worker.join()
    assert out == [True, False] and check.stats["errors"] == 0


def test_exact_compares_normalized_text():
    check = get_checker("exact")
    assert check("The answer is 1,234.", "1234") and check("\\boxed{1234.0}", "1234")
    assert not check("The answer is 0.5.", "\\frac{1}{2}")  # text, not value
    assert not check("no number", "3") and check.stats["no_answer"] == 1


def test_a_users_own_checker(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "data"))
    check = get_checker("py:my_checker:same_parity")
    assert check("The answer is 8.", "2") and not check("The answer is 7.", "2")
    assert check("no digits", "2") is False and check.stats["errors"] == 1
    sys.modules.pop("my_checker", None)


@pytest.mark.parametrize(("spec", "message"), [
    ("sympy", "valid checkers: math, exact"),
    ("py:nope", "py:module:function"),
    ("py:no_such_module_here:f", "cannot load"),
])
def test_bad_checkers_are_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        get_checker(spec)
