"""A scripted generator and scripted verifiers: the built-in fakes for tests and demos (no
engine, no model).

It answers every request with candidates cycled from a fixed list of texts,
counting characters as tokens, so routes, streaming, selectors and errors can be
exercised in milliseconds. ``delay_s`` makes generation take time (to test
keep-alives and cancellation); ``fail_with`` makes ``generate`` raise.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from ..errors import InvalidRequestError
from ..types import (
    Candidate,
    Extension,
    Generation,
    Piece,
    Progress,
    Prompt,
    SamplingParams,
    TokenLogprob,
)
from .base import PreparedRequest


class ScriptedGenerator:
    def __init__(
        self,
        texts: Sequence[str] = ("The answer is 1.",),
        *,
        model_name: str = "scripted",
        max_model_len: int = 512,
        delay_s: float = 0.0,
        fail_with: Exception | None = None,
    ) -> None:
        self.texts = list(texts)
        self.model_name = model_name
        self.max_model_len = max_model_len
        self.delay_s = delay_s
        self.fail_with = fail_with
        self.calls: list[PreparedRequest] = []
        self.cancelled = 0
        self.streams_cancelled = 0
        self.streams_finished = 0
        self.extend_calls: list[list[Extension]] = []
        self._draws = 0

    def prepare(self, prompt: Prompt, params: SamplingParams, n: int) -> PreparedRequest:
        if prompt.token_ids is not None:
            length = len(prompt.token_ids)
        elif prompt.messages is not None:
            length = sum(len(m.content) + 2 for m in prompt.messages)
        else:
            length = len(prompt.text or "")
        if length >= self.max_model_len:
            raise InvalidRequestError("prompt is too long", param="prompt")
        return PreparedRequest(prompt, params, n, length)

    async def generate(self, request: PreparedRequest) -> Generation:
        self.calls.append(request)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.fail_with is not None:
            raise self.fail_with
        limit = request.params.max_tokens
        candidates = []
        for i in range(request.n):
            text = self.texts[i % len(self.texts)]
            finish = "stop"
            if limit is not None and len(text) > limit:
                text, finish = text[:limit], "length"
            logprobs = None
            if request.params.logprobs is not None:
                logprobs = tuple(TokenLogprob(ch, -0.1 * (i + 1)) for ch in text)
            candidates.append(
                Candidate(
                    text=text,
                    token_ids=tuple(ord(ch) for ch in text),
                    cumulative_logprob=-0.1 * (i + 1) * len(text),
                    finish_reason=finish,  # type: ignore[arg-type]
                    logprobs=logprobs,
                )
            )
        return Generation(tuple(candidates), prompt_tokens=request.prompt_tokens)


    async def extend(
        self, request: PreparedRequest, asks: Sequence[Extension], separator: str | None
    ) -> list[list[Piece]]:
        """Step search: a prefix (characters as token ids) continues as the scripted texts
        that start with it, cycled over the asks' draws, up to the next ``separator`` (kept)
        or to its end; ``extend_calls`` records each step's asks."""
        self.extend_calls.append(list(asks))
        if self.delay_s:
            try:
                await asyncio.sleep(self.delay_s)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        out = []
        for ask in asks:
            prefix = "".join(chr(t) for t in ask.prefix)
            matches = [t for t in self.texts if t.startswith(prefix) and t != prefix] or [prefix]
            pieces = []
            for _ in range(ask.n):
                rest = matches[self._draws % len(matches)][len(prefix):]
                self._draws += 1
                cut = rest.find(separator) if separator else -1
                step = rest if cut < 0 else rest[: cut + len(separator or "")]
                pieces.append(Piece(step, tuple(ord(ch) for ch in step), -0.1 * len(step),
                                    ended=cut < 0))
            out.append(pieces)
        return out

    async def stream(self, request: PreparedRequest, index: int) -> AsyncIterator[Progress]:
        """Candidate ``index`` line by line (``delay_s`` before each line); ``streams_cancelled``
        counts the candidates closed before their end."""
        text = self.texts[index % len(self.texts)]
        lines = text.splitlines(keepends=True)
        so_far = ""
        try:
            for k, line in enumerate(lines):
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                so_far += line
                done = k == len(lines) - 1
                yield Progress(
                    Candidate(
                        text=so_far,
                        token_ids=tuple(ord(ch) for ch in so_far),
                        cumulative_logprob=-0.1 * (index + 1) * len(so_far),
                        finish_reason="stop",
                    ),
                    done,
                )
            self.streams_finished += 1
        except (asyncio.CancelledError, GeneratorExit):
            self.streams_cancelled += 1
            raise


class ConstantScorer:
    """A fake verifier: scores from a fixed list (cycled), or raises ``fail_with``."""

    kind = "orm"

    def __init__(self, scores: Sequence[float] = (0.5,), fail_with: Exception | None = None):
        self.scores = list(scores)
        self.fail_with = fail_with

    async def score(self, prompt, candidates, aggregation=None):  # type: ignore[no-untyped-def]
        if self.fail_with is not None:
            raise self.fail_with
        return [self.scores[i % len(self.scores)] for i in range(len(candidates))]


class ScriptedPRM:
    """A fake PRM: each candidate's steps (``split_steps``) scored from a fixed list, cycled
    along the steps; the candidate's score aggregates them as a real PRM's does."""

    kind = "prm"

    def __init__(self, step_scores: Sequence[float] = (0.9, 0.2), aggregation: str = "min"):
        self.pattern = list(step_scores)
        self.aggregation = aggregation

    async def step_scores(self, prompt, candidates):  # type: ignore[no-untyped-def]
        from ..scorers.steps import split_steps

        return [
            [self.pattern[i % len(self.pattern)] for i in range(len(split_steps(c.text)))]
            for c in candidates
        ]

    async def score(self, prompt, candidates, aggregation=None):  # type: ignore[no-untyped-def]
        from ..scorers.base import aggregate

        how = aggregation or self.aggregation
        return [aggregate(s, how) for s in await self.step_scores(prompt, candidates)]
