"""The raw records every later stage derives from, and their JSONL I/O.

``SampleRecord`` is the source of truth: ONE line per sampled candidate, holding everything
needed to recompute correctness, rebuild training sets or re-run a sample (policy, sampling
parameters, request seed, sample index). ``StepLabelRecord`` holds the Monte-Carlo process
labels of one candidate as raw k-of-M counts; hard and soft labels are *derived* from them
(``hard_labels`` / ``soft_labels``), never stored, so a threshold can change without
rolling out again.

This module owns the record shapes and the file format; it knows nothing of vLLM or torch.
Files are JSON Lines, one record per line, keys in field order; reading refuses unknown or
missing keys so a file from another version fails loudly instead of silently.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, TypeVar

from bon_server.types import Message, Prompt

# how a StepLabelRecord's counts were made: Monte-Carlo rollouts, or the task's exact checker
LABELLERS = ("rollouts", "exact")


@dataclass(frozen=True, slots=True)
class SampleRecord:
    """One sampled candidate for one problem."""

    problem_id: str  # "<split>-<problem seed>-<index>", unique across a data set
    question: str  # the user message the policy answered
    reference: str  # the reference answer, normalized
    completion: str  # the candidate text, as the generator returned it
    answer: str | None  # bon_server.answers.extract_answer(completion)
    correct: bool  # the task's checker: tasks.get_task(task).check(problem, completion)
    policy: str  # the policy's path (or hub id)
    temperature: float
    top_p: float
    max_tokens: int
    seed: int  # the engine request's seed (one request per problem, n candidates)
    sample_index: int  # which of the request's n candidates (0..n-1)
    finish_reason: str  # "stop" or "length"
    completion_tokens: int
    task: str = "arith"  # the world (tasks.TASKS); files written before worlds were arith

    @property
    def prompt(self) -> Prompt:
        """The prompt the policy saw (and the verifiers read): one user message."""
        return question_prompt(self.question)

    def problem(self):  # type: ignore[no-untyped-def]
        """The task's problem, recovered from the question (every world's prompt holds it)."""
        from bon_server.tasks import get_task

        return get_task(self.task).parse(self.question)  # a dataset: its --dataset loaded

    @property
    def key(self) -> tuple[str, int]:
        return (self.problem_id, self.sample_index)


@dataclass(frozen=True, slots=True)
class StepLabelRecord:
    """Math-Shepherd-style labels of one candidate's steps.

    ``counts[j]`` is how many of ``rollouts`` continuations of steps[: j + 1] reached the
    reference answer; None where step j was not rolled out because an earlier step already
    had k == 0 (early stopping: the step inherits "bad", ``inferred[j]`` is True). The last
    step (the answer line) is not rolled out: its count is ``rollouts`` if the candidate is
    correct, else 0. With ``labeller == "exact"`` the counts are 1-of-1 verdicts of the
    task's step checker instead (``label-steps --method exact``).
    """

    problem_id: str
    sample_index: int
    question: str
    reference: str
    steps: tuple[str, ...]
    counts: tuple[int | None, ...]
    rollouts: int  # M
    inferred: tuple[bool, ...]
    correct: bool  # the candidate's own outcome
    policy: str
    seed: int  # base seed of the rollout requests
    # "rollouts" (Math-Shepherd k-of-M) or "exact" (the task's step checker, 1-of-1 counts)
    labeller: str = "rollouts"

    def __post_init__(self) -> None:
        if self.labeller not in LABELLERS:
            raise ValueError(f"labeller must be one of {LABELLERS}, not {self.labeller!r}")
        if not (len(self.steps) == len(self.counts) == len(self.inferred)):
            raise ValueError("steps, counts and inferred must have one entry per step")
        for k, inf in zip(self.counts, self.inferred, strict=True):
            if (k is None) != inf:
                raise ValueError("a count is None exactly where the step is inferred")
            if k is not None and not 0 <= k <= self.rollouts:
                raise ValueError(f"count {k} is outside 0..{self.rollouts}")

    @property
    def prompt(self) -> Prompt:
        return question_prompt(self.question)

    @property
    def key(self) -> tuple[str, int]:
        return (self.problem_id, self.sample_index)

    def hard_labels(self) -> list[bool]:
        """A step is good when some rollout from it reached the answer (Math-Shepherd HE)."""
        return hard_labels(self.counts)

    def soft_labels(self) -> list[float]:
        """k / M per step (Math-Shepherd SE); inferred steps are 0."""
        return soft_labels(self.counts, self.rollouts)

    def first_error(self) -> int:
        """Index of the first bad step, or -1 if every step is good (ProcessBench's label)."""
        return first_error(self.hard_labels())


def question_prompt(question: str, system_prompt: str = "") -> Prompt:
    """The prompt a policy answers: the question as the user message, after the system
    message where there is one (a dataset's ``--system-prompt``)."""
    user = Message("user", question)
    return Prompt(messages=(Message("system", system_prompt), user) if system_prompt
                  else (user,))


def task_system_prompt(task: Any) -> str:
    """The system message a task's problems are asked with: a dataset's ``--system-prompt``
    ("" without one). A world's problems are asked without one (its ``system_prompt`` is one
    of the system messages its SFT chats vary over, not part of its prompts)."""
    return getattr(task, "system_prompt", "") if getattr(task, "finite", False) else ""


def chat_messages(question: str, system_prompt: str = "") -> list[dict[str, str]]:
    """``question_prompt``'s messages as a chat template reads them (role, content dicts): the
    prompt of every chat a policy is sampled, rolled out or trained with."""
    messages = question_prompt(question, system_prompt).messages or ()
    return [{"role": m.role, "content": m.content} for m in messages]


def hard_labels(counts: Iterable[int | None]) -> list[bool]:
    return [k is not None and k > 0 for k in counts]


def soft_labels(counts: Iterable[int | None], rollouts: int) -> list[float]:
    return [0.0 if k is None else k / rollouts for k in counts]


def first_error(good: Iterable[bool]) -> int:
    for i, ok in enumerate(good):
        if not ok:
            return i
    return -1


# ---------------------------------------------------------------------------------- JSONL

R = TypeVar("R", SampleRecord, StepLabelRecord)
_TUPLES = {"steps", "counts", "inferred"}


def to_json(record: SampleRecord | StepLabelRecord) -> str:
    return json.dumps(asdict(record), ensure_ascii=False)


def from_dict(cls: type[R], data: dict[str, Any]) -> R:
    names = [f.name for f in fields(cls)]
    optional = {f.name for f in fields(cls) if f.default is not MISSING}
    missing = [n for n in names if n not in data and n not in optional]
    extra = [k for k in data if k not in names]
    if missing or extra:
        raise ValueError(f"not a {cls.__name__}: missing keys {missing}, unknown keys {extra}")
    values = {n: tuple(data[n]) if n in _TUPLES else data[n] for n in names if n in data}
    return cls(**values)


def write_jsonl(path: str, records: Iterable[SampleRecord | StepLabelRecord]) -> int:
    """Write atomically (temp file, then rename); returns the number of records."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp"
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(to_json(record) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


def iter_jsonl(path: str, cls: type[R]) -> Iterator[R]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield from_dict(cls, json.loads(line))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{path}:{lineno}: {exc}") from None


def read_samples(path: str) -> list[SampleRecord]:
    return list(iter_jsonl(path, SampleRecord))


def read_labels(path: str) -> list[StepLabelRecord]:
    return list(iter_jsonl(path, StepLabelRecord))


def group_by_problem(records: Iterable[R]) -> dict[str, list[R]]:
    """Records per problem id, in first-seen problem order, sample order kept."""
    groups: dict[str, list[R]] = {}
    for r in records:
        groups.setdefault(r.problem_id, []).append(r)
    return groups


def write_json(path: str, data: Any) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")
