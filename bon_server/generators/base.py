"""The generator interface: validate a request up front, then sample N candidates in ONE call.

``prepare`` runs before any response is started, so a prompt that is too long is
a plain 400 even for a streaming request; ``generate`` then makes exactly one
engine request with ``n = best_of``, sharing the prompt's prefix computation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..types import Extension, Generation, Piece, Progress, Prompt, SamplingParams


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    """A validated request, ready for the engine. ``payload`` is the generator's own."""

    prompt: Prompt
    params: SamplingParams
    n: int
    prompt_tokens: int
    payload: Any = None


class Generator(Protocol):
    model_name: str

    def prepare(self, prompt: Prompt, params: SamplingParams, n: int) -> PreparedRequest:
        """Validate and render; raise InvalidRequestError for a client mistake."""
        ...

    async def generate(self, request: PreparedRequest) -> Generation:
        """Sample ``request.n`` candidates; cancelling the call aborts all of them."""
        ...


class StreamingGenerator(Generator, Protocol):
    """A generator that can also follow one candidate at a time (for pruning)."""

    def stream(self, request: PreparedRequest, index: int) -> AsyncIterator[Progress]:
        """Candidate ``index`` of ``request`` alone, as it grows; closing the iteration
        aborts it."""
        ...


class StepGenerator(Generator, Protocol):
    """A generator that can continue candidates a step at a time (for step search)."""

    async def extend(
        self, request: PreparedRequest, asks: Sequence[Extension], separator: str | None
    ) -> list[list[Piece]]:
        """For each ask, ``ask.n`` continuations of the prompt plus ``ask.prefix``, each
        ending at ``separator`` (kept in its text; None: at its end); all asks at once,
        cancelling the call aborts every one."""
        ...
