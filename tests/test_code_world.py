"""The code world (``bon_server.tasks.code``) and the code shape of a dataset file
(``bon_server.tasks.code_dataset``): problems, hidden tests, the sandbox checker, parsing, the
example file, bad files. The shipped policy on the real engine, through ``sample``, ``rsft``,
``export`` and ``passk``: ``test_code_training.py``."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from bon_server.answers import extract_answer
from bon_server.sandbox import extract_program, run_tests_sync
from bon_server.tasks import get_task, task_for_question
from bon_server.tasks.code import (
    ANCHORS,
    DOMAIN,
    HIDDEN_INPUTS,
    Fn,
    Problem,
    canonical,
    functions,
    hidden_tests,
    parse_question,
    visible_tests,
)
from bon_server.tasks.dataset import DatasetError, DatasetTask

ROOT = Path(__file__).resolve().parents[1]
CODE = get_task("code")
POLICY = ROOT / "bon_server" / "embedded" / "code-policy"


def all_pass(program: str, tests: list[str]) -> bool:
    report = run_tests_sync(program, tests)
    return report.total == len(tests) and report.passed == report.total


# ------------------------------------------------------------------ the world


def test_problems_are_seeded_and_their_own_stream():
    problems = CODE.problems(200, seed=7)
    assert problems == CODE.problems(200, seed=7)
    assert problems != CODE.problems(200, seed=8)
    rng = random.Random(5)
    assert [CODE.sample(rng) for _ in range(5)] == CODE.problems(5, 5)
    # both arities, one and two operations, every operator
    assert {p.arity for p in problems} == {1, 2}
    assert {len(p.fn.steps) for p in problems} == {1, 2}
    assert {op for p in problems for op, _ in p.fn.steps} == {"+", "-", "*", "//", "%"}


def test_the_prompt_exactly_and_its_tests():
    p = parse_question("Write a Python function g(x) that passes these tests:\n"
                       "assert g(0) == 4\nassert g(1) == 7\nassert g(11) == 37\n"
                       "assert g(17) == 55")
    assert p is not None and p.answer == "def g(x):\n    return x * 3 + 4"
    assert CODE.reference(p) == "```python\ndef g(x):\n    return x * 3 + 4\n```"
    assert visible_tests(p)[0] == "assert g(0) == 4"
    assert parse_question(p.question.replace("g(0) == 4", "g(2) == 10")) == Problem(
        "g", p.fn, ((2,), (1,), (11,), (17,)))  # any shown inputs: the same function
    assert hidden_tests(p)[:2] == ["assert g(-7) == -17", "assert g(-2) == -2"]


def test_visible_tests_are_the_prompts_and_hidden_ones_are_not():
    for p in CODE.problems(300, seed=3):
        lines = p.question.splitlines()
        assert visible_tests(p) == lines[1:] and len(lines) == 5
        assert p.inputs[:2] == ANCHORS[p.arity]  # the base cases first
        hidden = hidden_tests(p)
        assert len(hidden) >= 5 and not set(hidden) & set(lines)
        shown = set(DOMAIN[p.arity])
        assert sum(args not in shown for args in HIDDEN_INPUTS[p.arity]) >= 5  # out of range
        assert len({line.rsplit(" == ", 1)[1] for line in lines[1:]}) > 1  # not a constant


def test_parse_round_trips_and_refuses_other_prompts():
    for p in CODE.problems(2000, seed=11):
        assert parse_question(p.question) == p
        assert task_for_question(p.question) is CODE
    for other in ("arith", "countdown", "paths"):
        assert CODE.parse(get_task(other).problems(1, 1)[0].question) is None
    q = CODE.problems(1, 1)[0].question
    assert CODE.parse(q.replace("assert", "assert  ", 1)) is None  # not the exact shape
    lines = q.splitlines()
    lines[1] = lines[1].replace("(", "(0", 1)
    assert CODE.parse("\n".join(lines)) is None  # a leading zero
    # examples that fit no function of the grammar, or two that differ at a hidden input
    assert CODE.parse("Write a Python function f(x) that passes these tests:\n"
                      "assert f(1) == 5\nassert f(2) == 1\nassert f(3) == 9\n"
                      "assert f(4) == 2") is None
    assert CODE.parse("Write a Python function f(x) that passes these tests:\n"
                      "assert f(1) == 0\nassert f(2) == 0\nassert f(3) == 0\n"
                      "assert f(4) == 0") is None


def test_the_canonical_function_is_the_simplest_that_fits():
    drawn = Fn(1, (("+", 2), ("+", 3)))
    inputs = [(1,), (4,), (9,), (15,)]
    assert canonical(1, inputs, [drawn(*a) for a in inputs]) == Fn(1, (("+", 5),))
    assert Fn(1, (("+", 3), ("*", 2))).expression == "(x + 3) * 2"
    assert Fn(1, (("*", 3), ("//", 2))).expression == "x * 3 // 2"
    assert Fn(2, (("-", "y"), ("%", 4))).source("h") == "def h(x, y):\n    return (x - y) % 4"
    assert len(functions(1)) == 42 + 42 * 42 and len(functions(2)) == 3 + 3 * 42


def test_references_pass_their_hidden_tests_in_the_sandbox_and_wrong_programs_fail():
    rng = random.Random(0)
    for p in CODE.problems(25, seed=21):
        ref = CODE.reference(p)
        program = extract_program(ref)
        assert all_pass(program, hidden_tests(p)) and all_pass(program, visible_tests(p))
        assert CODE.check(p, ref) and CODE.check(p, "Here it is:\n" + ref)
        assert not CODE.check(p, "")
        assert not CODE.check(p, ref.replace("def ", "def not_", 1))  # another name
        bad = CODE.corrupt(p, ref, rng)
        if bad is not None:
            assert not CODE.check(p, bad) and not all_pass(extract_program(bad), hidden_tests(p))
    # a lookup table of the shown examples passes them and fails the hidden tests
    p = CODE.problems(1, seed=5)[0]
    table = {args: p.fn(*args) for args in p.inputs}
    cheat = (f"```python\ndef {p.name}(*args):\n    return {table!r}[args]\n```")
    assert CODE.partial_checks(p, cheat) == {"visible_tests": True}
    assert not CODE.check(p, cheat)


def test_votes_go_by_the_program():
    p = CODE.problems(1, seed=2)[0]
    ref = CODE.reference(p)
    key = extract_answer(ref, CODE.answer_rules)
    assert key is not None and key == extract_answer(
        "Sure.\n" + ref.replace("return ", "return  ") + "\n\n", CODE.answer_rules)
    assert extract_answer(ref.replace("return", "return 1 +"), CODE.answer_rules) != key


# ------------------------------------------------------------------ the dataset shape

HUMANEVAL = {
    "task_id": "Mine/0",
    "prompt": 'from typing import List\n\n\ndef total(xs: List[int]) -> int:\n'
              '    """The sum of xs."""\n',
    "canonical_solution": "    return sum(xs)\n",
    "test": "def check(candidate):\n    assert candidate([1, 2]) == 3\n"
            "    assert candidate([]) == 0\n",
    "entry_point": "total",
}


def write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_the_example_file_loads_as_mbpp_and_its_solutions_pass():
    task = DatasetTask(str(ROOT / "examples" / "code_tests.jsonl"), held_out=0)
    assert task.shape == "code" and task.checker.name == "tests"
    assert task.answer_rules == ("program",)
    problems = task.problems(None, seed=1)
    assert len(problems) == 8
    for p in problems:
        assert task.check(p, task.reference(p)), p.question
        assert all_pass(p.answer, list(p.tests))
        assert not task.check(p, "```python\ndef nothing():\n    return 0\n```")
    assert task.checker.stats["errors"] >= 1  # NameError in every test


def test_a_humaneval_row_checks_candidate_and_takes_a_body(tmp_path):
    task = DatasetTask(write(tmp_path / "he.jsonl", [HUMANEVAL]), held_out=0)
    p = task.problems(None, seed=1)[0]
    assert p.tests[0].rstrip().endswith("check(total)")
    assert task.check(p, task.reference(p))
    assert task.check(p, "    return sum(xs)\n")  # the body alone, after the prompt
    assert task.check(p, "```python\ndef total(xs):\n    return sum(xs)\n```")
    assert not task.check(p, "```python\ndef total(xs):\n    return len(xs)\n```")


def test_a_test_script_without_check_is_one_test(tmp_path):
    row = {"prompt": "Write double(n).", "test": "assert double(2) == 4\nassert double(0) == 0\n",
           "code": "def double(n):\n    return 2 * n"}
    task = DatasetTask(write(tmp_path / "s.jsonl", [row]), held_out=0)
    p = task.problems(None, seed=1)[0]
    assert len(p.tests) == 1
    assert task.check(p, task.reference(p)) and not task.check(p, "def double(n): return n")


BAD_CODE = [
    ([{"prompt": "a", "tests": ["assert f(1) == 1"]}, {"prompt": "b"}],
     r"bad\.jsonl:2: missing field 'tests'"),
    ([{"prompt": "a", "tests": []}], r"bad\.jsonl:1: field 'tests' holds no test"),
    ([{"prompt": "a", "tests": "assert f("}], r"bad\.jsonl:1: field 'tests' is not Python"),
    ([{"prompt": "a", "tests": ["assert f(1) == 1", "assert ("]}],
     r"bad\.jsonl:1: field 'tests' item 1 is not Python"),
    ([{"prompt": "a", "tests": ["assert f(1) == 1"]}, {"prompt": "b", "tests": [3]}],
     r"bad\.jsonl:2: field 'tests' item 0 must be a non-empty string"),
    ([{**HUMANEVAL, "entry_point": None}],
     r"bad\.jsonl:1: field 'test' defines check\(candidate\): the row needs an 'entry_point'"),
    ([{**HUMANEVAL, "entry_point": "not a name"}], r"bad\.jsonl:1: field 'entry_point'"),
    ([{"prompt": "", "tests": ["assert True"]}], r"bad\.jsonl:1: field 'prompt' is empty"),
    ([{"prompt": "a", "tests": ["assert True"], "code": "def f(:"}],
     r"bad\.jsonl:1: field 'code' is not Python"),
]


@pytest.mark.parametrize(("rows", "message"), BAD_CODE)
def test_a_bad_code_file_gets_one_clear_error(tmp_path, rows, message):
    with pytest.raises(DatasetError, match=message):
        DatasetTask(write(tmp_path / "bad.jsonl", rows))


def test_the_tests_checker_is_the_code_shapes_and_only_its(tmp_path):
    import argparse

    from bon_server.tasks.args import add_task_args, task_from_args

    parser = argparse.ArgumentParser()
    add_task_args(parser)
    path = str(ROOT / "examples" / "code_tests.jsonl")
    task = task_from_args(parser.parse_args(["--dataset", path, "--checker", "tests"]))
    assert task.checker.name == "tests" and task.name == "dataset:code_tests"
    gsm = str(ROOT / "examples" / "gsm8k_arith.jsonl")
    with pytest.raises(SystemExit, match="--checker tests wants a tests field"):
        task_from_args(parser.parse_args(["--dataset", gsm, "--checker", "tests"]))
