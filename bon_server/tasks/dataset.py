r"""A user's dataset file as a ``Task``: its problems come from the file, its checker from
math-verify (or ``exact``, or the user's own function).

Loaded with Hugging Face ``datasets``: JSONL, JSON, CSV, Parquet, a directory saved with
``save_to_disk``, or a hub id (``owner/name``, ``owner/name:split``; the hub is asked only for
a path that is not on disk). Fields are recognised by shape, first match wins:

    gsm8k   ``question``, and ``answer`` ending ``#### N``: the reference is N, the text before
            it the worked solution
    math    ``problem``, and ``answer``, else ``solution`` with a ``\boxed{}`` (its last box is
            the reference, the solution the worked one)
    plain   ``prompt`` and ``answer``
    code    ``prompt``, and ``test`` (a script; HumanEval's ``check(candidate)`` with its
            ``entry_point``) or ``tests`` / ``test_list`` (a list of asserts): checked by its
            tests in the sandbox (``--checker tests``, this shape's default; see ``code_dataset``).
            A row with a tests field is this shape (with the checker math or tests).

``prompt_field`` / ``answer_field`` override the shape (the answer field is then read as the
GSM8K and MATH shapes read theirs: ``#### N`` or ``\boxed{}`` where present, else as is).

A bad file is refused whole, with ONE error naming the row (``FILE:LINE`` for JSONL and
CSV, ``FILE: row I`` otherwise) and the field: a missing field, an empty file, a wrong type,
or a reference the checker cannot parse. Nothing is written before a file has loaded.

Held out. The ``held_out`` part is chosen by a hash of the question: a fraction below 1 takes
each question whose hash falls under it (so a question's side depends on its text alone, not
on the file's order, the other rows, ``--limit`` or ``--seed``); a count takes the questions of
lowest hash. ``problems(count, EVAL_SEED)`` draws only from it and every other seed only from
the rest, as ``held_out_questions`` / ``training_problems`` keep the worlds' evaluation
problems out of their training streams. ``limit`` keeps the file's first rows first.

A dataset task registers itself (``bon_server.tasks.register``) under its name,
``dataset:<file stem>``, so records naming it resolve to it in the process that loaded it.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..answers import DEFAULT_RULES
from .math_check import Checker, get_checker

SHAPES: dict[str, tuple[str, str]] = {
    "gsm8k": ("question", "answer"),
    "math": ("problem", "solution"),  # or ("problem", "answer"): tried first
    "plain": ("prompt", "answer"),
}
FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
DEFAULT_HELD_OUT = 0.2
_GSM8K_ANSWER = re.compile(r"####\s*(.+?)\s*$", re.S)


class DatasetError(ValueError):
    """A dataset file that cannot be used: the message names the file, the row and the field."""


@dataclass(frozen=True, slots=True)
class DatasetProblem:
    question: str  # the user message, exactly
    answer: str  # the reference answer the checker compares with
    solution: str | None = None  # a worked solution, where the file has one
    row: int = 0  # index in the file (after --limit)


def last_boxed(text: str) -> str | None:
    r"""The content of the last ``\boxed{...}`` (braces balanced), or None."""
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j].strip() or None
    return None


def read_rows(spec: str) -> tuple[list[dict[str, Any]], str]:
    """The rows of a file, saved directory or hub id, and how to name row i ("line" or "row",
    and the first number). Errors name the file."""
    path = Path(spec)
    if path.is_dir():
        from datasets import DatasetDict, load_from_disk

        try:
            ds = load_from_disk(str(path), keep_in_memory=True)
        except Exception as exc:
            raise DatasetError(f"{spec}: not a saved `datasets` directory ({exc})") from None
        if isinstance(ds, DatasetDict):
            ds = ds["test"] if "test" in ds else next(iter(ds.values()))
        return ds.to_list(), "row"
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix not in FORMATS:
            raise DatasetError(f"{spec}: unknown format {suffix!r}; valid: {', '.join(FORMATS)}")
        if path.stat().st_size == 0:
            raise DatasetError(f"{spec}: the file is empty")
        parsed = _check_jsonl(path) if suffix == ".jsonl" else None
        from datasets import load_dataset
        from datasets.utils import logging as ds_logging

        quiet = ds_logging.is_progress_bar_enabled()
        ds_logging.disable_progress_bar()
        with tempfile.TemporaryDirectory() as cache:  # leave no cache behind
            try:
                ds = load_dataset(FORMATS[suffix], data_files=str(path), split="train",
                                  cache_dir=cache, keep_in_memory=True)
            except Exception as exc:
                if parsed is None:
                    raise DatasetError(f"{spec}: cannot read it as {suffix[1:]}: "
                                       f"{type(exc).__name__}: {exc}") from None
                # Arrow refuses a column of mixed types: the rows as parsed, so that the
                # checks below name the line and the field
                return parsed, "line"
            finally:
                if quiet:
                    ds_logging.enable_progress_bar()
            rows = ds.to_list()
        return rows, "line" if suffix in (".jsonl", ".csv") else "row"
    if re.fullmatch(r"[\w.-]+/[\w.-]+(:[\w.-]+)?", spec):
        from datasets import load_dataset

        name, _, split = spec.partition(":")
        try:
            ds = load_dataset(name, split=split or "train")
        except Exception as exc:
            raise DatasetError(f"{spec}: no such file, and the hub gave "
                               f"{type(exc).__name__}: {exc}") from None
        return ds.to_list(), "row"
    raise DatasetError(f"{spec}: no such file or directory (nor an owner/name hub id)")


def _check_jsonl(path: Path) -> list[dict[str, Any]]:
    """A JSONL file's syntax, line by line, so an error names its line (``datasets`` would
    report an Arrow error with no line); its rows."""
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{lineno}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DatasetError(f"{path}:{lineno}: not a JSON object")
            rows.append(row)
    if not rows:
        raise DatasetError(f"{path}: the file is empty")
    return rows


def _jsonl_lines(path: Path) -> list[int]:
    with path.open(encoding="utf-8") as f:
        return [n for n, line in enumerate(f, 1) if line.strip()]


def detect_shape(columns: Sequence[str], prompt_field: str | None,
                 answer_field: str | None) -> tuple[str, str, str]:
    """(shape, prompt field, answer field) for these columns; DatasetError when none fits."""
    cols = set(columns)
    if prompt_field and answer_field:
        return "custom", prompt_field, answer_field
    candidates = [("gsm8k", "question", "answer"), ("math", "problem", "answer"),
                  ("math", "problem", "solution"), ("plain", "prompt", "answer")]
    for shape, p, a in candidates:
        p, a = prompt_field or p, answer_field or a
        if p in cols and a in cols:
            return shape, p, a
    wanted = "; ".join(f"{s}: {p!r} and {a!r}" for s, p, a in candidates)
    raise DatasetError(f"no known shape in the columns {sorted(cols)} (want {wanted}; code: "
                       "'prompt' and 'test' or 'tests'; or name them with --prompt-field and "
                       "--answer-field)")


def reference_of(shape: str, text: str, field: str = "answer") -> tuple[str | None, str | None]:
    """(reference answer, worked solution) of an answer field's text (a MATH ``solution``
    must hold a box; a MATH ``answer`` is the answer itself)."""
    gsm = _GSM8K_ANSWER.search(text)
    if gsm and (shape in ("gsm8k", "custom") or "####" in text):
        worked = text[: gsm.start()].strip()
        return gsm.group(1).strip(), worked or None
    if shape == "gsm8k":
        return None, None
    box = last_boxed(text)
    if box is not None and (shape in ("math", "custom") or "\\boxed" in text):
        return box, text.strip()
    if shape == "math" and (field == "solution" or "\\boxed" in text):
        return None, None
    return text.strip() or None, None


def question_hash(question: str) -> float:
    """A question's place in [0, 1), from its text alone: what picks the held-out part."""
    return int(hashlib.sha256(question.encode()).hexdigest()[:13], 16) / 16**13


class DatasetTask:
    """A dataset file as a ``Task`` (see the module docstring)."""

    answer_rules = DEFAULT_RULES
    finite = True  # problems come from a file: streams draw each at most once

    def __init__(self, spec: str, *, prompt_field: str | None = None,
                 answer_field: str | None = None, checker: str = "math",
                 system_prompt: str = "", step_separator: str = "\n\n",
                 limit: int | None = None, held_out: float = DEFAULT_HELD_OUT,
                 name: str | None = None) -> None:
        self.spec = spec
        self.name = name or f"dataset:{Path(spec.rstrip('/')).stem or spec}"
        self.system_prompt = system_prompt
        self.step_separator = step_separator
        from .code_dataset import TestsChecker, code_fields

        self.checker: Checker | TestsChecker = (TestsChecker() if checker == "tests"
                                                else get_checker(checker))
        rows, unit = read_rows(spec)
        if limit is not None:
            rows = rows[:limit]
        if not rows:
            raise DatasetError(f"{spec}: the file is empty")
        lines = _jsonl_lines(Path(spec)) if unit == "line" and spec.endswith(".jsonl") else None

        def where(i: int) -> str:  # "FILE:LINE" as compilers write it, else "FILE: row I"
            if lines is not None:
                return f"{spec}:{lines[i]}"
            return f"{spec}:{i + 2}" if unit == "line" else f"{spec}: row {i}"  # CSV: a header

        try:  # a row with tests is the code shape, unless another checker is asked for
            code = code_fields(list(rows[0]), prompt_field, answer_field, checker) \
                if checker in ("math", "tests") else None
            self.shape, self.prompt_field, self.answer_field = ("code", *code) if code else \
                detect_shape(list(rows[0]), prompt_field, answer_field)
        except DatasetError as exc:
            raise DatasetError(f"{where(0)}: {exc}") from None
        if code:  # math is only the flag's default: a code row is checked by its tests
            self.checker = TestsChecker()
        # votes count what the checker counts: math-verify's equal answers are one vote
        self.answer_rules = (("program",) if code else ("math",) if checker == "math"
                             else DEFAULT_RULES)
        problems = []
        for i, row in enumerate(rows):
            problems.append(self._problem(i, row, where(i)))
        self._all = problems
        self._by_question = {p.question: p for p in problems}
        self._held_out = self._choose_held_out(held_out)

    def _problem(self, i: int, row: dict[str, Any], where: str) -> DatasetProblem:
        p, a = self.prompt_field, self.answer_field
        if self.shape == "code":
            from .code_dataset import code_problem

            return code_problem(i, row, where, p, a)  # type: ignore[return-value]
        for field in (p, a):
            if field not in row or row[field] is None:
                raise DatasetError(f"{where}: missing field {field!r}")
        question = row[p]
        if not isinstance(question, str):
            raise DatasetError(f"{where}: field {p!r} must be a string, not "
                               f"{type(question).__name__}")
        if not question.strip():
            raise DatasetError(f"{where}: field {p!r} is empty")
        value = row[a]
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise DatasetError(f"{where}: field {a!r} must be a string or a number, not "
                               f"{type(value).__name__}")
        reference, solution = reference_of(self.shape, str(value), a)
        if reference is None:
            want = {"gsm8k": "an answer ending '#### N'",
                    "math": "a solution with \\boxed{...}"}.get(self.shape, "a reference")
            raise DatasetError(f"{where}: field {a!r} has no reference answer (want {want})")
        why = self.checker.check_reference(reference)
        if why is not None:
            raise DatasetError(f"{where}: field {a!r}: {why}")
        return DatasetProblem(question, reference, solution, i)

    def _choose_held_out(self, held_out: float) -> set[str]:
        if held_out < 0:
            raise DatasetError("held out must be >= 0 (a fraction below 1, else a count)")
        if held_out < 1:  # each question on its own: the same part whatever the other rows
            return {q for q in self._by_question if question_hash(q) < held_out}
        ranked = sorted(self._by_question, key=question_hash)
        return set(ranked[: int(held_out)])

    # ------------------------------------------------------------------------- the Task API

    @property
    def held_out(self) -> list[DatasetProblem]:
        return [p for p in self._all if p.question in self._held_out]

    @property
    def training(self) -> list[DatasetProblem]:
        """The problems outside the held-out part (a question repeated in the file: once)."""
        seen: set[str] = set()
        out = []
        for p in self._all:
            if p.question not in self._held_out and p.question not in seen:
                seen.add(p.question)
                out.append(p)
        return out

    def problems(self, count: int | None, seed: int) -> list[DatasetProblem]:
        """The held-out part for ``EVAL_SEED`` (in file order), else the training part
        shuffled by ``seed``; at most ``count`` (None: all)."""
        from .base import EVAL_SEED

        if seed == EVAL_SEED:
            pool = self.held_out
        else:
            pool = self.training
            random.Random(seed).shuffle(pool)
        return pool[:count] if count is not None else pool

    def sample(self, rng: Any) -> DatasetProblem:
        return rng.choice(self.training or self._all)

    def reference(self, problem: DatasetProblem) -> str:
        """The file's worked solution, ending with its answer; the bare answer without one."""
        if self.shape == "code":  # the file's program, fenced
            from .code_dataset import code_reference

            return code_reference(problem)  # type: ignore[arg-type]
        if problem.solution is None:
            return f"The answer is {problem.answer}."
        if "\\boxed" in problem.solution:
            return problem.solution
        return f"{problem.solution}\nThe answer is {problem.answer}."

    def check(self, problem: DatasetProblem, completion: str) -> bool:
        if self.shape == "code":  # the problem's tests, in the sandbox
            return self.checker(completion, problem)  # type: ignore[arg-type]
        return self.checker(completion, problem.answer)  # type: ignore[arg-type]

    def check_step(self, problem: DatasetProblem, steps: Sequence[str], i: int) -> bool | None:
        return None  # a dataset has no step checker

    def parse(self, question: str) -> DatasetProblem | None:
        return self._by_question.get(question)

    def partial_checks(self, problem: DatasetProblem, completion: str) -> dict[str, bool]:
        return {}

    def describe(self) -> str:
        n, h = len(self._by_question), len(self._held_out)
        return (f"{self.name}: {len(self._all)} rows, shape {self.shape} "
                f"({self.prompt_field!r} -> {self.answer_field!r}), {n - h} training problems, "
                f"{h} held out, checker {self.checker.name}")

    def checker_stats(self) -> dict[str, int]:
        return dict(self.checker.stats)


def is_dataset_name(name: str) -> bool:
    return name.startswith("dataset:")
