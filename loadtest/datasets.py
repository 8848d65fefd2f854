"""Prompts with what grades them: a task world (``arith``, ``countdown``, ``paths``), a
dataset file read as the training tools read it (``bon_server.tasks.dataset``: GSM8K, MATH or
plain fields, any format ``datasets`` reads, graded by its checker, math-verify by default),
or a JSONL file in the load tester's own form.

A file line is ``{"messages": [...], "answer": "..."}`` (sent to /v1/chat/completions)
or ``{"prompt": "...", "answer": "..."}`` (sent to /v1/completions), graded by comparing the
extracted answer with ``answer``; or it names its world, ``{"task": "countdown",
"messages": [...]}``, and is graded by that world's checker (the world's prompt, the last
user message or the prompt, carries what the checker needs; ``answer`` is then optional).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bon_server.answers import extract_answer, normalize_answer
from bon_server.tasks.base import EVAL_SEED


@dataclass(frozen=True, slots=True)
class Item:
    answer: str
    messages: tuple[dict[str, Any], ...] | None = None
    prompt: str | None = None
    task: str | None = None  # graded by this world's checker instead of ``answer``

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("an item has exactly one of messages and prompt")
        if self.task is not None and self.problem() is None:
            raise ValueError(f"not a {self.task} prompt: {self.question!r}")

    @property
    def question(self) -> str:
        if self.messages is None:
            return self.prompt or ""
        users = [m for m in self.messages if m.get("role") == "user"]
        return str(users[-1].get("content", "")) if users else ""

    def problem(self) -> Any:
        from bon_server.tasks import get_task

        return get_task(self.task).parse(self.question) if self.task else None

    def is_right(self, text: str) -> bool:
        if self.task is None:
            return extract_answer(text) == normalize_answer(self.answer)
        from bon_server.tasks import get_task

        return get_task(self.task).check(self.problem(), text)


def world_items(task: str, count: int, seed: int) -> list[Item]:
    """``count`` fresh problems of a world (``tasks.TASKS``), from their seeded stream."""
    from bon_server.tasks import get_task

    return [
        Item(str(p.answer), messages=({"role": "user", "content": p.question},), task=task)
        for p in get_task(task).problems(count, seed)
    ]


def arith_items(count: int, seed: int) -> list[Item]:
    return world_items("arith", count, seed)


def read_jsonl(path: Path) -> list[Item]:
    items = []
    with path.open() as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: not JSON ({exc})") from None
            if not isinstance(row, dict) or ("answer" not in row and "task" not in row):
                raise ValueError(f"{where}: need an object with 'answer' or 'task'")
            task = row.get("task")
            if task is not None and task not in _tasks():
                raise ValueError(f"{where}: unknown task {task!r}; valid: {', '.join(_tasks())}")
            messages, prompt = row.get("messages"), row.get("prompt")
            if (messages is None) == (prompt is None):
                raise ValueError(f"{where}: need exactly one of 'messages' and 'prompt'")
            if messages is not None and not (
                isinstance(messages, list)
                and messages
                and all(isinstance(m, dict) for m in messages)
            ):
                raise ValueError(f"{where}: 'messages' must be a non-empty list of objects")
            if prompt is not None and not isinstance(prompt, str):
                raise ValueError(f"{where}: 'prompt' must be a string")
            try:
                items.append(
                    Item(
                        str(row.get("answer", "")),
                        messages=tuple(messages) if messages is not None else None,
                        prompt=prompt,
                        task=task,
                    )
                )
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
    if not items:
        raise ValueError(f"{path}: no items")
    return items


def _tasks() -> list[str]:
    from bon_server.tasks import WORLDS

    return list(WORLDS)


def task_items(task: Any, count: int) -> list[Item]:
    """``count`` items of a dataset task (``tasks.args.task_from_args``), its problems in file
    order, cycled when fewer; sent as chats (its system prompt first), graded by its checker."""
    problems = task.problems(None, 0) + task.problems(None, EVAL_SEED)  # training, held out
    problems.sort(key=lambda p: p.row)
    head = ({"role": "system", "content": task.system_prompt},) if task.system_prompt else ()
    items = [Item(p.answer, messages=(*head, {"role": "user", "content": p.question}),
                  task=task.name) for p in problems]
    return [items[i % len(items)] for i in range(count)]


def own_form(spec: str) -> bool:
    """Whether a file is in the load tester's own form: JSONL whose rows carry ``messages``
    or ``task`` (any other file is read as a dataset)."""
    path = Path(spec)
    if not (path.is_file() and path.suffix == ".jsonl"):
        return False
    with path.open() as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                return True  # let its reader name the line
            if isinstance(row, dict) and ("messages" in row or "task" in row):
                return True
    return False


def load_dataset(spec: str, count: int, seed: int = 0) -> list[Item]:
    """``count`` items: a world's name draws fresh problems with ``seed``; a file is read in
    order and cycled when shorter than ``count``. Every cell of a run uses the same items."""
    if count < 1:
        raise ValueError("count must be >= 1")
    if spec in _tasks():
        return world_items(spec, count, seed)
    path = Path(spec)
    if path.exists() and not own_form(spec):
        from bon_server.tasks import register
        from bon_server.tasks.dataset import DatasetTask

        return task_items(register(DatasetTask(spec)), count)
    if not path.is_file():
        raise ValueError(
            f"dataset must be a world ({', '.join(_tasks())}) or a JSONL file; "
            f"{spec!r} is neither"
        )
    items = read_jsonl(path)
    return [items[i % len(items)] for i in range(count)]
