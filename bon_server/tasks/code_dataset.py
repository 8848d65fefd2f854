"""The code shape of a dataset file: problems checked by their unit tests in the sandbox.

HumanEval- and MBPP-like rows (``DatasetTask`` recognises them by their fields):

    prompt      the question (MBPP's ``text`` is read where there is no ``prompt``)
    test        a script: HumanEval's defines ``check(candidate)``, and the test is then
                the script and ``check(<entry_point>)``; any other script is one test
                (``sandbox.split_tests``)
    tests       a list of test snippets (``assert f(3) == 7``); MBPP's ``test_list`` too
    entry_point the function under test (needed by a ``check(candidate)`` script)
    canonical_solution / code   optional: a solution to train on (HumanEval's completes the
                prompt; MBPP's is the whole program)
    test_setup_code / test_imports   optional (MBPP): put before every test

A completion is right when its program (``sandbox.extract_program``: the last fenced block,
else the whole text) passes every test in the sandbox. Where the prompt is Python itself
(HumanEval's imports, signature and docstring: it parses and defines a function) it is put
before the program, so that a completion may be the function's body alone and the prompt's
imports hold; a completion that writes the whole function redefines it.

A bad row is refused with the file's one error naming the line and the field: a missing or
empty field, a wrong type, a test or solution that is not Python, a ``check(candidate)``
script without an ``entry_point``. The checker is ``tests`` (``--checker tests``, and the
default for this shape: math-verify has nothing to compare here).
"""

from __future__ import annotations

import ast
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .code import fenced, program_of, report_of
from .dataset import DatasetError

PROMPT_FIELDS = ("prompt", "text")
TEST_FIELDS = ("test", "tests", "test_list")
SOLUTION_FIELDS = ("canonical_solution", "code")
SETUP_FIELDS = ("test_setup_code", "test_imports")


@dataclass(frozen=True, slots=True)
class CodeProblem:
    question: str  # the user message, exactly
    answer: str  # the file's solution program ("" where it has none): records, votes
    tests: tuple[str, ...]  # each run after the program, in the sandbox
    entry_point: str | None = None
    prelude: str = ""  # the prompt where it is Python: put before the completion's program
    row: int = 0

    @property
    def solution(self) -> str | None:
        return self.answer or None


def code_fields(columns: Sequence[str], prompt_field: str | None, answer_field: str | None,
                checker: str) -> tuple[str, str] | None:
    """(prompt field, tests field) when these columns are the code shape (or ``checker`` is
    ``tests``); None for another shape. ``answer_field`` names the tests field."""
    cols = set(columns)
    tests = answer_field if answer_field else next((f for f in TEST_FIELDS if f in cols), None)
    prompt = prompt_field or next((f for f in PROMPT_FIELDS if f in cols), PROMPT_FIELDS[0])
    if checker == "tests":
        if tests is None:
            raise DatasetError(f"--checker tests wants a tests field (one of "
                               f"{', '.join(TEST_FIELDS)}, or --answer-field) in the columns "
                               f"{sorted(cols)}")
        return prompt, tests
    if tests is None or tests not in TEST_FIELDS or prompt not in cols:
        return None
    return prompt, tests


def is_python(text: str) -> bool:
    try:
        ast.parse(text)
    except (SyntaxError, ValueError):
        return False
    return True


def _defines(text: str, name: str | None = None) -> bool:
    """Does this Python text define a function (named ``name``) at its top level?"""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return False
    return any(isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
               and (name is None or node.name == name) for node in tree.body)


def _text(row: dict[str, Any], field: str, where: str, *, required: bool = True) -> str | None:
    value = row.get(field)
    if value is None:
        if required:
            raise DatasetError(f"{where}: missing field {field!r}")
        return None
    if not isinstance(value, str):
        raise DatasetError(f"{where}: field {field!r} must be a string, not "
                           f"{type(value).__name__}")
    if not value.strip():
        raise DatasetError(f"{where}: field {field!r} is empty")
    return value


def _tests(row: dict[str, Any], field: str, where: str, entry_point: str | None) -> list[str]:
    from ..sandbox import split_tests

    value = row.get(field)
    if value is None:
        raise DatasetError(f"{where}: missing field {field!r}")
    if isinstance(value, str):
        if not value.strip():
            raise DatasetError(f"{where}: field {field!r} is empty")
        if not is_python(value):
            raise DatasetError(f"{where}: field {field!r} is not Python (a syntax error)")
        if _defines(value, "check"):  # HumanEval: check(candidate) on the entry point
            if entry_point is None:
                raise DatasetError(f"{where}: field {field!r} defines check(candidate): the "
                                   "row needs an 'entry_point' (the function it checks)")
            return [f"{value.rstrip()}\n\ncheck({entry_point})\n"]
        tests = list(split_tests(value))
    elif isinstance(value, list):
        tests = value
    else:
        raise DatasetError(f"{where}: field {field!r} must be a test script or a list of "
                           f"tests, not {type(value).__name__}")
    if not tests:
        raise DatasetError(f"{where}: field {field!r} holds no test")
    for i, test in enumerate(tests):
        if not isinstance(test, str) or not test.strip():
            raise DatasetError(f"{where}: field {field!r} item {i} must be a non-empty string")
        if not is_python(test):
            raise DatasetError(f"{where}: field {field!r} item {i} is not Python: {test!r}")
    return tests


def _setup(row: dict[str, Any], where: str) -> str:
    setup = row.get("test_setup_code")
    imports = row.get("test_imports")
    lines = []
    if setup is not None:
        if not isinstance(setup, str):
            raise DatasetError(f"{where}: field 'test_setup_code' must be a string")
        lines.append(setup.strip())
    if imports is not None:
        if not isinstance(imports, list) or not all(isinstance(x, str) for x in imports):
            raise DatasetError(f"{where}: field 'test_imports' must be a list of strings")
        lines += imports
    setup_code = "\n".join(line for line in lines if line)
    if setup_code and not is_python(setup_code):
        raise DatasetError(f"{where}: the test setup is not Python")
    return setup_code


def code_problem(i: int, row: dict[str, Any], where: str, prompt_field: str,
                 tests_field: str) -> CodeProblem:
    """One row as a ``CodeProblem``; DatasetError naming the row and the field."""
    question = _text(row, prompt_field, where)
    assert question is not None
    entry_point = _text(row, "entry_point", where, required=False)
    if entry_point is not None and not entry_point.isidentifier():
        raise DatasetError(f"{where}: field 'entry_point' must be a function name, not "
                           f"{entry_point!r}")
    setup = _setup(row, where)
    tests = [f"{setup}\n{t}" if setup else t for t in _tests(row, tests_field, where,
                                                                  entry_point)]
    prelude = question if _defines(question) else ""
    solution = ""
    for field in SOLUTION_FIELDS:
        text = _text(row, field, where, required=False)
        if text is None:
            continue
        # HumanEval's canonical solution is the body that completes the prompt
        solution = (prelude + text) if field == "canonical_solution" and prelude else text
        if not is_python(solution):
            raise DatasetError(f"{where}: field {field!r} is not Python (a syntax error)")
        break
    return CodeProblem(question, solution.strip(), tuple(tests), entry_point, prelude, i)


def code_reference(problem: CodeProblem) -> str:
    """The file's solution in a fenced block (what a policy is trained on)."""
    if not problem.answer:
        raise ValueError(f"row {problem.row}: the file has no solution to train on (a "
                         f"{' or '.join(SOLUTION_FIELDS)} field)")
    return fenced(problem.answer)


class TestsChecker:
    """The tests checker: the completion's program, after the prompt where the prompt is
    Python, passes every test in the sandbox. Counts ``timeouts`` and ``errors`` (every test
    raised something other than a failed assert: a program that does not run)."""

    name = "tests"
    __test__ = False  # not a pytest class

    def __init__(self) -> None:
        self.stats: Counter[str] = Counter()

    def check_reference(self, reference: str) -> str | None:
        return None

    def __call__(self, completion: str, problem: CodeProblem) -> bool:  # type: ignore[override]
        program = program_of(completion)
        if problem.prelude:
            program = f"{problem.prelude.rstrip()}\n\n{program}"
        report = report_of(program, problem.tests)
        if report.timed_out:
            self.stats["timeouts"] += 1
        elif report.total and report.errored == report.total:
            self.stats["errors"] += 1
        return report.total > 0 and report.passed == report.total
