"""Text in, text out: the program in a completion, and the tests a dataset gives."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence

# a fence line: ``` or ```python (any info string), alone on its line
_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+.#-]*)[^`\n]*$")
_PYTHON = frozenset({"", "python", "py", "python3", "py3"})


def extract_program(text: str) -> str:
    """The last fenced code block of ``text``, else the whole text.

    A Python (or unlabelled) block wins over a later block in another language (an example
    of output); a last block that the completion never closed (it ran out of tokens) counts
    up to the end of the text. The block is dedented (a fence inside a list item).
    """
    blocks: list[tuple[str, list[str]]] = []
    current: list[str] | None = None
    for line in text.replace("\r\n", "\n").split("\n"):
        fence = _FENCE.match(line)
        if current is None:
            if fence:
                current = []
                blocks.append((fence.group(1).lower(), current))
        elif fence and not fence.group(1):
            current = None
        else:
            current.append(line)
    if not blocks:
        return text
    python = [body for language, body in blocks if language in _PYTHON]
    body = (python or [body for _, body in blocks])[-1]
    return textwrap.dedent("\n".join(body)).strip("\n") + "\n"


def split_tests(tests: str | Sequence[str]) -> list[str]:
    """A list of test snippets as given; one script string is one test (a blank one: none)."""
    if isinstance(tests, str):
        return [tests] if tests.strip() else []
    snippets = list(tests)
    for snippet in snippets:
        if not isinstance(snippet, str):
            raise TypeError(f"a test must be a string, not {type(snippet).__name__}")
    return snippets
