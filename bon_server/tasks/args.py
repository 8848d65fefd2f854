"""The task flags, ONE set for every command that takes a task: ``add_task_args(parser)`` and
``task_from_args(args)``.

``--task WORLD`` or ``--dataset PATH`` (one of them; neither: the policy's world), and for a
dataset ``--prompt-field``, ``--answer-field``, ``--checker``, ``--limit``, ``--held-out``
and ``--system-prompt``; ``--step-separator`` for either (a dataset's default is a blank line,
a world's a line). ``--seed`` stays each command's own: it picks the problems drawn.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from ..scorers.steps import DEFAULT_SEPARATOR, resolve_separator
from . import WORLDS, get_task, policy_task, register
from .base import Task
from .dataset import DEFAULT_HELD_OUT, DatasetError, DatasetTask


def add_task_args(parser: argparse.ArgumentParser, *, default_task: str | None = None,
                  worlds_in_dataset: bool = False) -> None:
    """Add the task flags. ``worlds_in_dataset``: ``--dataset`` also takes a world's name (the
    load tester's older flag)."""
    group = parser.add_argument_group("task (a world, or your dataset file)")
    which = group.add_mutually_exclusive_group()
    which.add_argument("--task", default=default_task, choices=list(WORLDS),
                       help="a built-in world (default: the one the policy was trained on)")
    which.add_argument("--dataset", default=None, metavar="PATH",
                       help="your problems: JSONL, JSON, CSV, Parquet, a saved `datasets` "
                            "directory or a hub id; GSM8K (question, answer '#### N'), MATH "
                            "(problem, solution with \\boxed{} or answer), plain (prompt, "
                            "answer) or code (prompt, and test or tests: HumanEval, MBPP) "
                            "fields" + (", or a world's name" if worlds_in_dataset else ""))
    group.add_argument("--prompt-field", default=None,
                       help="the dataset's prompt column (default: by shape)")
    group.add_argument("--answer-field", default=None,
                       help="the dataset's reference column (default: by shape)")
    group.add_argument("--checker", default="math",
                       help="how a dataset's answers are checked: math (math-verify), exact, "
                            "py:module:function taking (completion, reference), or tests (a "
                            "code dataset's unit tests in the sandbox: its default)")
    group.add_argument("--limit", type=int, default=None,
                       help="use only the dataset's first N rows")
    group.add_argument("--held-out", type=float, default=DEFAULT_HELD_OUT,
                       help="the dataset's held-out part, kept out of every training stream "
                            "(chosen by a hash of the question): a fraction below 1, else a "
                            "count")
    group.add_argument("--system-prompt", default=None,
                       help="a system message before each dataset question (default: none)")
    group.add_argument("--step-separator", default=None,
                       help="where one step ends: 'line', 'blank' (a blank line) or the text "
                            "itself (default: blank for a dataset, line for a world)")


def task_from_args(args: argparse.Namespace, policy: str | None = None) -> Task:
    """The task the flags name (a dataset is loaded and registered); SystemExit with the
    dataset's one error."""
    spec = getattr(args, "dataset", None)
    if spec is not None and not (spec in WORLDS and not os.path.exists(spec)):
        if getattr(args, "limit", None) is not None and args.limit < 1:
            raise SystemExit("--limit must be >= 1")
        try:
            task = DatasetTask(
                spec, prompt_field=args.prompt_field, answer_field=args.answer_field,
                checker=args.checker, system_prompt=args.system_prompt or "",
                step_separator=resolve_separator(args.step_separator, "\n\n"),
                limit=args.limit, held_out=args.held_out)
        except (DatasetError, ValueError) as exc:
            raise SystemExit(f"error: {exc}") from None
        return register(task)
    name = spec or getattr(args, "task", None) or (policy_task(policy) if policy else "arith")
    return get_task(name)


def task_separator(task: Task, args: argparse.Namespace | None = None) -> str:
    """The step separator: the flag's, else the task's (a dataset's), else a line."""
    flag = getattr(args, "step_separator", None) if args is not None else None
    try:
        return resolve_separator(flag, getattr(task, "step_separator", DEFAULT_SEPARATOR))
    except ValueError as exc:
        raise SystemExit(f"error: --step-separator: {exc}") from None


def task_flags(args: argparse.Namespace) -> list[str]:
    """The task flags again, as argv: for a command that runs another's ``main``."""
    out: list[str] = []
    if getattr(args, "dataset", None):
        out += ["--dataset", args.dataset, "--checker", args.checker,
                "--held-out", str(args.held_out)]
        for flag in ("prompt_field", "answer_field", "limit", "system_prompt"):
            value = getattr(args, flag, None)
            if value is not None:
                out += [f"--{flag.replace('_', '-')}", str(value)]
    elif getattr(args, "task", None):
        out += ["--task", args.task]
    if getattr(args, "step_separator", None) is not None:
        out += ["--step-separator", args.step_separator]
    return out


def checker_summary(task: Any) -> str:
    """``checker math: no_answer 3 timeouts 0 errors 0`` for a dataset; "" for a world."""
    checker = getattr(task, "checker", None)
    if checker is None:
        return ""
    stats = {"no_answer": 0, "timeouts": 0, "errors": 0, **checker.stats}
    return f"checker {checker.name}: " + "  ".join(f"{k} {v}" for k, v in stats.items())
