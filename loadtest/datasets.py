"""Prompts with reference answers: the arithmetic world, or a JSONL file.

A file line is ``{"messages": [...], "answer": "..."}`` (sent to /v1/chat/completions)
or ``{"prompt": "...", "answer": "..."}`` (sent to /v1/completions).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Item:
    answer: str
    messages: tuple[dict[str, Any], ...] | None = None
    prompt: str | None = None

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("an item has exactly one of messages and prompt")


def arith_items(count: int, seed: int) -> list[Item]:
    from verifier_training.tasks.arith import sample_problems

    return [
        Item(str(p.answer), messages=({"role": "user", "content": p.question},))
        for p in sample_problems(count, seed)
    ]


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
            if not isinstance(row, dict) or "answer" not in row:
                raise ValueError(f"{where}: need an object with 'answer'")
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
            items.append(
                Item(
                    str(row["answer"]),
                    messages=tuple(messages) if messages is not None else None,
                    prompt=prompt,
                )
            )
    if not items:
        raise ValueError(f"{path}: no items")
    return items


def load_dataset(spec: str, count: int, seed: int = 0) -> list[Item]:
    """``count`` items: ``arith`` draws fresh problems with ``seed``; a file is read in
    order and cycled when shorter than ``count``. Every cell of a run uses the same items."""
    if count < 1:
        raise ValueError("count must be >= 1")
    if spec == "arith":
        return arith_items(count, seed)
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"dataset must be 'arith' or a JSONL file; {spec!r} is neither")
    items = read_jsonl(path)
    return [items[i % len(items)] for i in range(count)]
