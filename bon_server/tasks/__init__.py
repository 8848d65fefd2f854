"""Task worlds: one module a world, each a ``Task`` (see ``base``).

``TASKS`` is the registry; ``get_task(name)`` fails by listing the valid names. A new world
(code checked by unit tests, say) is one new module and one entry here. A user's dataset file
is a task too (``dataset.DatasetTask``): loading one registers it (``register``) for the
process, under ``dataset:<file stem>``, so the records it writes resolve to it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from .base import Task

__all__ = [
    "TASKS",
    "Task",
    "check_question",
    "get_task",
    "policy_task",
    "policy_world",
    "register",
    "task_for_question",
]


def _registry() -> dict[str, Task]:
    from .arith import ArithTask
    from .code import CodeTask
    from .countdown import CountdownTask
    from .paths import PathsTask

    return {t.name: t for t in (ArithTask(), CountdownTask(), PathsTask(), CodeTask())}


TASKS: dict[str, Task] = _registry()


WORLDS: tuple[str, ...] = tuple(TASKS)  # the built-in worlds (TASKS also holds datasets)


def register(task: Task) -> Task:
    """Make ``task`` (a loaded dataset) known to ``get_task`` in this process."""
    TASKS[task.name] = task
    _parsed.cache_clear()
    return task


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        if name.startswith("dataset:"):
            raise ValueError(f"records of {name!r} come from a dataset file: pass it again "
                             "with --dataset PATH (and the same --prompt-field, "
                             "--answer-field and --checker)") from None
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}") from None


def task_for_question(question: str) -> Task | None:
    """The world whose prompt this is (each world's prompt has its own exact shape)."""
    for task in TASKS.values():
        if task.parse(question) is not None:
            return task
    return None


def policy_world(policy: str) -> str | None:
    """The world a policy directory was trained on by ``verifier_training sft`` (its
    ``training_config.json``), or None for a model that is not one of ours. A policy
    post-trained from one of ours (``rsft``, ``dpo``, ``distill``) without its own ``data``
    record has its init's world."""
    import json
    from pathlib import Path

    try:
        record = json.loads((Path(policy) / "training_config.json").read_text())
    except (OSError, ValueError):
        return None
    while (isinstance(record, dict) and "data" not in record
           and isinstance(record.get("init_training_config"), dict)):
        record = record["init_training_config"]
    if not isinstance(record, dict) or "verifier_training" not in str(record.get("command")):
        return None
    data = record.get("data")
    # ``sft --task`` defaults to arith; the first policies' configs predate the field
    task = data.get("task", "arith") if isinstance(data, dict) else "arith"
    return task if isinstance(task, str) else None


def policy_task(policy: str) -> str:
    """The world a policy was trained on, else ``arith`` (the tools' default world)."""
    return policy_world(policy) or "arith"


def check_question(question: str, completion: str) -> bool:
    """The checker of the world whose prompt ``question`` is (False for no world's prompt)."""
    found = _parsed(question)
    return found is not None and found[0].check(found[1], completion)


@lru_cache(maxsize=65536)
def _parsed(question: str) -> tuple[Task, Any] | None:
    task = task_for_question(question)
    return None if task is None else (task, task.parse(question))
