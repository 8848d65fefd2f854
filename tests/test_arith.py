"""The arithmetic world: question format, precedence, sampling bounds, solutions, checker."""

from __future__ import annotations

import random
import re

import pytest

from bon_server.tasks.arith import (
    Problem,
    check_answer,
    parse_question,
    reference_solution,
    sample_problem,
    sample_problems,
    step_arithmetic_ok,
)

EXAMPLE = Problem((17, 4, 23, 9), ("+", "*", "-"))


def test_question_format_exactly():
    assert EXAMPLE.question == "What is 17 + 4 * 23 - 9?"
    assert Problem((2, 3), ("-",)).question == "What is 2 - 3?"


@pytest.mark.parametrize(
    "operands, ops, answer",
    [
        ((17, 4, 23, 9), ("+", "*", "-"), 100),
        ((2, 3, 4), ("+", "*"), 14),  # * before +
        ((2, 3, 4), ("*", "+"), 10),
        ((10, 4, 3), ("-", "-"), 3),  # left to right
        ((10, 4, 3), ("-", "+"), 9),
        ((2, 30), ("-",), -28),
        ((3, 4, 5, 6), ("*", "-", "*"), -18),
        ((2, 3, 4, 5), ("*", "*", "*"), 120),
    ],
)
def test_precedence(operands, ops, answer):
    p = Problem(operands, ops)
    assert p.answer == answer
    assert p.answer == eval(p.question[len("What is ") : -1])  # Python's precedence agrees


def test_invalid_problem_rejected():
    with pytest.raises(ValueError):
        Problem((1, 2), ())
    with pytest.raises(ValueError):
        Problem((1, 2), ("/",))


def test_distribution_bounds_and_coverage():
    rng = random.Random(0)
    problems = [sample_problem(rng) for _ in range(3000)]
    lengths = {len(p.operands) for p in problems}
    values = {v for p in problems for v in p.operands}
    ops = {o for p in problems for o in p.ops}
    assert lengths == {2, 3, 4}
    assert min(values) == 2 and max(values) == 30 and len(values) == 29
    assert ops == {"+", "-", "*"}
    assert all(len(p.ops) == len(p.operands) - 1 for p in problems)


def test_sample_problems_is_seeded():
    assert sample_problems(20, 7) == sample_problems(20, 7)
    assert sample_problems(20, 7) != sample_problems(20, 8)


def test_reference_solution_example():
    assert (
        reference_solution(EXAMPLE)
        == "4 * 23 = 92\n17 + 92 = 109\n109 - 9 = 100\nThe answer is 100."
    )


def test_reference_solutions_step_by_step():
    """Replaying the steps on the expression reaches the answer, one operation per line."""
    step = re.compile(r"^(-?\d+) ([-+*]) (-?\d+) = (-?\d+)$")
    for p in sample_problems(500, 1):
        lines = reference_solution(p).split("\n")
        assert lines[-1] == f"The answer is {p.answer}."
        steps = lines[:-1]
        assert len(steps) == len(p.ops)  # one operation per step
        values, ops = list(p.operands), list(p.ops)
        for line in steps:
            a, op, b, c = step.match(line).groups()
            i = ops.index("*") if "*" in ops else 0  # precedence, then left to right
            assert (int(a), op, int(b)) == (values[i], ops[i], values[i + 1])
            assert int(c) == eval(f"{a} {op} {b}")
            values[i : i + 2], ops[i : i + 1] = [int(c)], []
        assert values == [p.answer]


def test_multiplications_first_then_left_to_right():
    p = Problem((5, 2, 3, 4), ("-", "+", "*"))
    assert reference_solution(p).split("\n") == [
        "3 * 4 = 12",
        "5 - 2 = 3",
        "3 + 12 = 15",
        "The answer is 15.",
    ]


def test_negative_answer_line():
    p = Problem((2, 30), ("-",))
    assert reference_solution(p) == "2 - 30 = -28\nThe answer is -28."
    assert check_answer(p, reference_solution(p))


def test_check_answer():
    assert check_answer(EXAMPLE, reference_solution(EXAMPLE))
    assert check_answer(EXAMPLE, "= 100\nThe answer is 100")
    assert check_answer(100, "The answer is 100.\n")
    assert check_answer("100", "The answer is 100.")
    assert not check_answer(EXAMPLE, "= 17 + 92 - 9\nThe answer is 101.")
    assert not check_answer(EXAMPLE, "= 100")  # no final line
    assert not check_answer(EXAMPLE, "")
    assert not check_answer(EXAMPLE, "The answer is 100.\n= 3")  # the final line must be last


def test_parse_question_round_trip():
    for p in sample_problems(300, 2):
        assert parse_question(p.question) == p
    assert parse_question("What is 17+4*23-9?") == EXAMPLE
    assert parse_question("What is the meaning of life?") is None
    assert parse_question("What is 2 +?") is None
    assert parse_question("2 + 3") is None


def test_step_arithmetic_ok_checks_each_operation_alone():
    for p in sample_problems(200, 3):
        lines = reference_solution(p).split("\n")
        assert all(step_arithmetic_ok(line) for line in lines[:-1])
        assert step_arithmetic_ok(lines[-1]) is None  # "The answer is N." is another shape
    assert step_arithmetic_ok("19 * 13 = 247") is True
    assert step_arithmetic_ok("29 - 8 = 19") is False
    assert step_arithmetic_ok("2 - 30 = -28") is True
    assert step_arithmetic_ok("-28 + 5 = -23") is True
    assert step_arithmetic_ok("11 * 13 = 143") is True  # operands are not checked
    assert step_arithmetic_ok("= 17 + 92") is None
    # a checker that knows only + and -: multiplication lines are another shape to it
    assert step_arithmetic_ok("19 * 13 = 248", ops="+-") is None
    assert step_arithmetic_ok("29 - 8 = 19", ops="+-") is False
