"""Proxy mode: candidates from any OpenAI-compatible server, one upstream call per request
(or per candidate, for pruning).

``bon-server serve --upstream http://policy:8000/v1`` runs no engine. Each Best-of-N
request becomes ONE upstream call with ``n = best_of`` (so a vLLM upstream computes the
prompt's prefix once and schedules the candidates together), non-streaming, since every
candidate must be complete before it can be scored. Chat prompts go to
``/chat/completions`` (the upstream renders its own chat template, exactly as the
in-process generator renders the policy's), text and token-id prompts to
``/completions``.

Pruning and scoring while decoding follow candidates one by one (``stream``): each is
its own streamed upstream call with ``n = 1``, closed to abort it.

What the upstream is asked for, beyond the OpenAI fields: vLLM's ``top_k``, ``min_p``,
``repetition_penalty`` and ``ignore_eos`` only when a request sets them, and
``return_token_ids`` always, for exact per-candidate token counts. A server that refuses
``return_token_ids`` with a 400 that names it (OpenAI itself does) is asked again
without it, once, and never again; then a candidate's length comes from its logprobs
when there are any, else the upstream's ``usage.completion_tokens`` is shared evenly
(exact in total, approximate per candidate), and ``Candidate.token_ids`` holds that
many ``-1`` placeholders. Run vLLM with ``--generation-config vllm`` so that its
defaults for what a request leaves out are vLLM's, as in-process, not the model's.

What cannot be checked here: context length (the tokenizer is upstream). ``prepare``
checks what needs no tokenizer (empty or negative token ids) and asks for
``--max-tokens-limit`` tokens when a request sets no ``max_tokens`` (a larger
``max_tokens`` is refused by the pipeline's policy before ``prepare``); the upstream's
400 for a prompt that is too long comes back as the same 400, its message kept and
``code: context_length_exceeded``. A streaming request's prompt is therefore
checked only once the stream has started: that error arrives as an SSE error event.

Failures map as ``upstream_client.py`` documents: an unreachable upstream is a 503, a
failing one a 502, a slow one a 504; its 400 (or 422) is a 400, its 413 and 429 the
same, and a 401, 403 or 404 (our key, our model) a 502. A reply that is not the shape
OpenAI documents (a missing field, a null logprob, a token id that is not a number) is
a 502 "malformed upstream reply", never a 500. The model to ask for is
``--upstream-model``, else the upstream's first listed model, discovered lazily, so
bon-server may start before its upstream (``/health`` is 503 until it answers).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import InvalidRequestError, UpstreamError
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
from ..upstream_client import ModelResolver, RemoteServer
from .base import PreparedRequest

if TYPE_CHECKING:
    import httpx

    from ..config import Settings

FINISH_REASONS = {"stop": "stop", "length": "length", "eos": "stop", "content_filter": "stop"}


class UpstreamGenerator:
    def __init__(
        self,
        remote: RemoteServer,
        *,
        model_name: str,
        upstream_model: str | None = None,
        max_tokens_limit: int | None = None,
    ) -> None:
        self.remote = remote
        self.model_name = model_name  # the name clients use; upstream_model is upstream's
        self.models = ModelResolver(remote, upstream_model)
        self.max_tokens_limit = max_tokens_limit
        self.ask_token_ids = True  # until the upstream refuses vLLM's return_token_ids
        self._in_flight = 0
        self._rendered: dict[str, list[int]] = {}  # step search: prompts rendered upstream

    @classmethod
    def from_settings(
        cls, settings: Settings, transport: httpx.AsyncBaseTransport | None = None
    ) -> UpstreamGenerator:
        assert settings.upstream is not None
        remote = RemoteServer.from_settings(
            settings, settings.upstream, name="upstream", api_key=settings.upstream_api_key,
            transport=transport,
        )
        return cls(
            remote,
            model_name=settings.model_name,
            upstream_model=settings.upstream_model,
            max_tokens_limit=settings.max_tokens_limit,
        )

    # ------------------------------------------------------------------ prepare

    def prepare(self, prompt: Prompt, params: SamplingParams, n: int) -> PreparedRequest:
        max_tokens = params.max_tokens  # the pipeline's policy refused one over the limit
        if max_tokens is None:
            max_tokens = self.max_tokens_limit
        body = _sampling_body(params, n, max_tokens)
        if prompt.messages is not None:
            path = "/chat/completions"
            body["messages"] = [{"role": m.role, "content": m.content} for m in prompt.messages]
            if params.logprobs is not None:
                body["logprobs"] = True
                body["top_logprobs"] = params.logprobs
        else:
            path = "/completions"
            if prompt.token_ids is not None:
                if not prompt.token_ids:
                    raise InvalidRequestError("prompt must not be empty", param="prompt")
                bad = [t for t in prompt.token_ids if t < 0]
                if bad:
                    raise InvalidRequestError(f"token id {bad[0]} is negative", param="prompt")
                body["prompt"] = list(prompt.token_ids)
            else:
                body["prompt"] = prompt.text or ""
            if params.logprobs is not None:
                body["logprobs"] = params.logprobs
        # The prompt's length is known only once upstream has tokenized it (usage).
        return PreparedRequest(prompt, params, n, 0, payload=(path, body))

    # ----------------------------------------------------------------- generate

    async def generate(self, request: PreparedRequest) -> Generation:
        path, body = request.payload
        body = {"model": await self.models.resolve(), **body}
        self._in_flight += request.n
        try:
            reply = await self._call(path, body)
        finally:
            self._in_flight -= request.n
        try:
            return self._generation(reply, request, chat=path == "/chat/completions")
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise UpstreamError(f"malformed upstream reply: {exc!r}") from None

    async def _call(self, path: str, body: dict[str, Any]) -> Any:
        if not self.ask_token_ids:
            return await self.remote.post(path, body)
        try:
            return await self.remote.post(path, {**body, "return_token_ids": True})
        except InvalidRequestError as exc:
            if "return_token_ids" not in exc.message:
                raise
        self.ask_token_ids = False  # not vLLM: count tokens from logprobs or usage
        return await self.remote.post(path, body)

    def _generation(self, reply: Any, request: PreparedRequest, *, chat: bool) -> Generation:
        try:
            choices = sorted(reply["choices"], key=lambda c: c.get("index", 0))
            usage = reply.get("usage") or {}
        except (KeyError, TypeError, AttributeError) as exc:
            raise UpstreamError(f"upstream reply has no choices: {exc!r}") from None
        if len(choices) != request.n:
            raise UpstreamError(f"upstream returned {len(choices)} choices for n={request.n}")
        k = request.params.logprobs
        parsed = [_parse_choice(c, chat, k) for c in choices]
        counts = _token_counts(parsed, usage.get("completion_tokens"))
        candidates = [_candidate(p, count, k) for p, count in zip(parsed, counts, strict=True)]
        prompt_tokens = usage.get("prompt_tokens")
        if not isinstance(prompt_tokens, int):
            prompt_tokens = len(reply.get("prompt_token_ids") or ())
        return Generation(tuple(candidates), prompt_tokens=prompt_tokens)

    # -------------------------------------------------------------- step search

    async def extend(
        self, request: PreparedRequest, asks: Sequence[Extension], separator: str | None
    ) -> list[list[Piece]]:
        """Step search through the upstream: ONE ``/completions`` request a step for every
        live beam (a list of token-id prompts: the rendered prompt plus each beam's prefix;
        ``stop`` at the separator, kept in the text by vLLM's ``include_stop_str_in_output``).
        A seeded request's asks go as separate requests of the same step (one seed each).
        One request carries one ``max_tokens``: the smallest room
        left among its beams, so no beam passes its budget or the context; a beam stopped
        short of its own budget is not ended, its step goes on in the next round.
        Needs a vLLM upstream: its ``/tokenize`` renders a chat prompt, and its token ids
        continue each beam exactly."""
        import asyncio

        if not self.ask_token_ids:
            raise InvalidRequestError(
                "step search in proxy mode needs an upstream that returns token ids (vLLM)",
                param="search",
            )
        path, body = request.payload
        prompt_ids = await self._prompt_ids(path, body)
        budget = body.get("max_tokens")
        results: list[list[Piece]] = [[] for _ in asks]
        client_stops = list(body.get("stop") or [])

        def room(i: int) -> int | None:
            return None if budget is None else budget - len(asks[i].prefix)

        live = []
        for i, ask in enumerate(asks):
            r = room(i)
            if r is not None and r <= 0:  # the budget is spent: the beam ends where it is
                results[i] = [Piece("", (), 0.0, ended=True, finish_reason="length")] * ask.n
            else:
                live.append(i)
        # one request for the step: the asks' prefixes as a list of prompts, with their common
        # n (or n = 1 and each prefix repeated); a seeded request's asks go one by one, as a
        # seed is one per request and the same seed would repeat the same continuation
        if any(asks[i].seed is not None for i in live):
            batches = [([i], asks[i].n, asks[i].seed) for i in live]
        elif len({asks[i].n for i in live}) == 1:
            batches = [(live, asks[live[0]].n, None)] if live else []
        else:
            batches = [([i for i in live for _ in range(asks[i].n)], 1, None)] if live else []

        async def send(members: list[int], n: int, seed: int | None) -> None:
            rooms = [r for r in (room(i) for i in members) if r is not None]
            step_body = {
                **{k: v for k, v in body.items() if k not in ("prompt", "messages", "logprobs",
                                                               "top_logprobs", "stop", "seed")},
                "model": await self.models.resolve(),
                "prompt": [prompt_ids + list(asks[i].prefix) for i in members],
                "n": n,
                "stop": client_stops + ([separator] if separator else []),
                "include_stop_str_in_output": True,
                "return_token_ids": True,
            }
            if rooms:
                step_body["max_tokens"] = min(rooms)
            if seed is not None:
                step_body["seed"] = seed
            reply = await self.remote.post("/completions", step_body)
            try:
                choices = sorted(reply["choices"], key=lambda c: c.get("index", 0))
                if len(choices) != n * len(members):
                    raise ValueError(f"{len(choices)} choices for {len(members)} prompts x n={n}")
                for j, i in enumerate(members):
                    results[i].extend(_piece(c, separator, client_stops, room(i))
                                      for c in choices[j * n:(j + 1) * n])
            except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
                raise UpstreamError(f"malformed upstream reply: {exc!r}") from None

        await asyncio.gather(*(send(m, n, seed) for m, n, seed in batches))
        return results

    async def _prompt_ids(self, path: str, body: dict[str, Any]) -> list[int]:
        """The prompt as token ids: a chat rendered by the upstream's ``/tokenize`` (vLLM's,
        at the server's root), a text tokenized there, token ids as given."""
        prompt = body.get("prompt")
        if isinstance(prompt, list):
            return list(prompt)
        key = repr(body.get("messages") if path == "/chat/completions" else prompt)
        cached = self._rendered.get(key)
        if cached is not None:
            return cached
        tokenize: dict[str, Any] = {"model": await self.models.resolve()}
        if path == "/chat/completions":
            tokenize |= {"messages": body["messages"], "add_generation_prompt": True}
        else:
            tokenize["prompt"] = prompt or ""
        root = self.remote.base_url.removesuffix("/v1")
        reply = await self.remote.post(f"{root}/tokenize", tokenize)
        try:
            ids = [int(t) for t in reply["tokens"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise UpstreamError(f"malformed upstream /tokenize reply: {exc!r}") from None
        if len(self._rendered) > 256:
            self._rendered.clear()
        self._rendered[key] = ids
        return ids

    # ------------------------------------------------------------------- stream

    async def stream(self, request: PreparedRequest, index: int) -> AsyncIterator[Progress]:
        """Candidate ``index`` of ``request`` alone, as it grows (for pruning): its own
        streamed upstream request with ``n = 1``, seeded ``seed + index`` where the client
        gave a seed, as in-process. Closing or cancelling the iteration closes the
        connection, and vLLM aborts a request whose client goes away.

        The last ``Progress`` (``done``) comes after ``[DONE]``, with the prompt's token
        count from the stream's usage (``stream_options.include_usage``, standard OpenAI).
        """
        path, body = request.payload
        chat = path == "/chat/completions"
        body = {"model": await self.models.resolve(), **body, "n": 1, "stream": True,
                "stream_options": {"include_usage": True}}
        if "seed" in body:
            body["seed"] += index
        k = request.params.logprobs
        grown = _Grown()
        self._in_flight += 1
        try:
            async with contextlib.aclosing(self._events(path, body)) as events:
                async for event in events:
                    try:
                        changed = grown.add(event, chat, k)
                    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
                        raise UpstreamError(f"malformed upstream stream: {exc!r}") from None
                    if changed:
                        yield Progress(grown.partial())
            yield Progress(grown.final(k), done=True, prompt_tokens=grown.prompt_tokens)
        finally:
            self._in_flight -= 1

    async def _events(self, path: str, body: dict[str, Any]) -> AsyncIterator[Any]:
        """``remote.stream``, asking for token ids as ``_call`` does (once refused, never).
        Every stream is closed as soon as its reader stops (``aclosing``), not when
        collected: closing it is what aborts the candidate upstream."""
        if self.ask_token_ids:
            started = False
            try:
                tagged = self.remote.stream(path, {**body, "return_token_ids": True})
                async with contextlib.aclosing(tagged) as events:
                    async for event in events:
                        started = True
                        yield event
                return
            except InvalidRequestError as exc:  # refused on opening: ask again without it
                if started or "return_token_ids" not in exc.message:
                    raise
            self.ask_token_ids = False
        async with contextlib.aclosing(self.remote.stream(path, body)) as events:
            async for event in events:
                yield event

    # ---------------------------------------------------------------- lifecycle

    def num_unfinished(self) -> int:
        """Candidates this server is waiting for upstream (not the upstream's own count)."""
        return self._in_flight

    async def check_health(self) -> None:
        """Healthy when the upstream lists the model we ask it for, within a few seconds."""
        await self.models.check()

    async def aclose(self) -> None:
        await self.remote.aclose()


def _sampling_body(p: SamplingParams, n: int, max_tokens: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"n": n, "temperature": p.temperature, "top_p": p.top_p}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if p.stop:
        body["stop"] = list(p.stop)
    if p.seed is not None:
        body["seed"] = p.seed
    if p.presence_penalty:
        body["presence_penalty"] = p.presence_penalty
    if p.frequency_penalty:
        body["frequency_penalty"] = p.frequency_penalty
    if p.logit_bias:
        body["logit_bias"] = {str(t): b for t, b in p.logit_bias}
    # vLLM's extras, only when asked for: a plain OpenAI server would refuse them.
    if p.top_k:
        body["top_k"] = p.top_k
    if p.min_p:
        body["min_p"] = p.min_p
    if p.repetition_penalty != 1.0:
        body["repetition_penalty"] = p.repetition_penalty
    if p.ignore_eos:
        body["ignore_eos"] = True
    return body


# (text, (finish_reason, stop_reason), token_ids or None, logprob entries or None)
Parsed = tuple[str, tuple[str, Any], tuple[int, ...] | None, list[TokenLogprob] | None]


def _parse_choice(choice: dict[str, Any], chat: bool, k: int | None) -> Parsed:
    try:
        text = (choice["message"].get("content") if chat else choice["text"]) or ""
    except (KeyError, AttributeError, TypeError):
        raise UpstreamError("upstream returned a choice without text") from None
    if not isinstance(text, str):
        raise UpstreamError(f"malformed upstream reply: text is {type(text).__name__}")
    reason = choice.get("finish_reason")
    if not isinstance(reason, str) or reason not in FINISH_REASONS:
        raise UpstreamError(f"upstream generation ended with {reason!r}")
    finish = (FINISH_REASONS[reason], choice.get("stop_reason"))
    ids = choice.get("token_ids")
    token_ids = tuple(int(t) for t in ids) if isinstance(ids, list) else None
    entries = None
    raw = choice.get("logprobs")
    if k is not None and raw:
        entries = _chat_entries(raw, k) if chat else _completion_entries(raw, k)
    return text, finish, token_ids, entries


def _piece(choice: dict[str, Any], separator: str | None, client_stops: list[str],
           room: int | None) -> Piece:
    """One step search continuation: a step (it stopped at the separator), the candidate's
    end (EOS, a client's stop, its own budget), or a step cut short by the shared
    ``max_tokens`` (not ended: it goes on next round)."""
    text = choice["text"]
    if not isinstance(text, str):
        raise ValueError(f"text is {type(text).__name__}")
    reason = FINISH_REASONS.get(choice.get("finish_reason"))  # type: ignore[arg-type]
    if reason is None:
        raise UpstreamError(f"upstream generation ended with {choice.get('finish_reason')!r}")
    stop = choice.get("stop_reason")
    ids = tuple(int(t) for t in choice["token_ids"])
    at_separator = separator is not None and stop == separator
    if isinstance(stop, str) and not at_separator and stop in client_stops and text.endswith(stop):
        text = text[: len(text) - len(stop)]
    ended = room is None or len(ids) >= room if reason == "length" else not at_separator
    return Piece(text, ids, None, ended=ended, finish_reason=reason)  # type: ignore[arg-type]


def _candidate(parsed: Parsed, count: int, k: int | None) -> Candidate:
    """A whole choice as a candidate: ``count`` placeholder ids where the upstream sent
    none; the cumulative and visible logprobs where they were asked for."""
    text, finish, token_ids, entries = parsed
    cumulative = logprobs = None
    if k is not None:
        if entries is None:
            raise UpstreamError("upstream returned no logprobs although they were asked")
        cumulative = math.fsum(e.logprob for e in entries)
        logprobs = _visible(entries, text, finish)
    return Candidate(
        text=text,
        token_ids=token_ids if token_ids is not None else (-1,) * count,
        cumulative_logprob=cumulative,
        finish_reason=finish[0],  # type: ignore[arg-type]
        logprobs=logprobs,
    )


class _Grown:
    """One streamed choice (``n = 1``) put together from its chunks."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.ids: list[int] | None = None  # None until a chunk carries token_ids
        self.entries: list[TokenLogprob] | None = None
        self.chunks = 0  # content chunks: one token each, where nothing better counts them
        self.reason: Any = None
        self.stop_reason: Any = None
        self.usage: dict[str, Any] = {}

    @property
    def prompt_tokens(self) -> int | None:
        count = self.usage.get("prompt_tokens")
        return count if isinstance(count, int) else None

    def add(self, event: dict[str, Any], chat: bool, k: int | None) -> bool:
        """Take in one chunk; whether the candidate grew."""
        self.usage = event.get("usage") or self.usage
        grew = False
        for choice in event.get("choices") or ():
            text = (choice["delta"].get("content") if chat else choice["text"]) or ""
            if not isinstance(text, str):
                raise TypeError(f"a streamed text is {type(text).__name__}")
            ids = choice.get("token_ids")
            if isinstance(ids, list):
                self.ids = (self.ids or []) + [int(t) for t in ids]
            raw = choice.get("logprobs")
            if k is not None and raw:
                new = _chat_entries(raw, k) if chat else _completion_entries(raw, k)
                self.entries = (self.entries or []) + new
            if text or ids:
                self.parts.append(text)
                self.chunks += 1
                grew = True
            if choice.get("finish_reason") is not None:
                self.reason = choice["finish_reason"]
                self.stop_reason = choice.get("stop_reason")
        return grew

    def partial(self) -> Candidate:
        ids = tuple(self.ids) if self.ids is not None else (-1,) * self.chunks
        return Candidate("".join(self.parts), ids, None, "length")

    def final(self, k: int | None) -> Candidate:
        if not isinstance(self.reason, str) or self.reason not in FINISH_REASONS:
            raise UpstreamError(f"upstream generation ended with {self.reason!r}")
        finish = (FINISH_REASONS[self.reason], self.stop_reason)
        ids = tuple(self.ids) if self.ids is not None else None
        parsed = ("".join(self.parts), finish, ids, self.entries)
        count = self.usage.get("completion_tokens")
        count = count if isinstance(count, int) and count >= 0 else self.chunks
        return _candidate(parsed, _token_counts([parsed], count)[0], k)


def _chat_entries(raw: dict[str, Any], k: int) -> list[TokenLogprob]:
    return [
        TokenLogprob(
            token=_token(e["token"]),
            logprob=float(e["logprob"]),
            top=tuple(
                (_token(t["token"]), float(t["logprob"])) for t in (e.get("top_logprobs") or [])[:k]
            ),
        )
        for e in raw.get("content") or []
    ]


def _completion_entries(raw: dict[str, Any], k: int) -> list[TokenLogprob]:
    entries = []
    tops = raw.get("top_logprobs") or []
    for i, (token, lp) in enumerate(zip(raw["tokens"], raw["token_logprobs"], strict=True)):
        # The legacy dict also holds the sampled token: keep the k most likely, best first.
        top = sorted((tops[i] or {}).items(), key=lambda kv: -kv[1])[:k] if i < len(tops) else []
        top_pairs = tuple((_token(t), float(v)) for t, v in top)
        entries.append(TokenLogprob(_token(token), float(lp), top_pairs))
    return entries


def _token(token: Any) -> str:
    if not isinstance(token, str):
        raise TypeError(f"a logprobs token is {type(token).__name__}, not a string")
    return token


def _visible(entries: list[TokenLogprob], text: str, finish: tuple[str, Any]) -> tuple:
    """The entries of the text's own tokens: vLLM also reports the EOS that ended it.

    In-process, the EOS counts in the token count and the cumulative log-probability
    (the logprob selector's mean) but is not shown among the logprobs; do the same.
    """
    reason, stop_reason = finish
    if (
        entries
        and reason == "stop"
        and not isinstance(stop_reason, str)  # not a stop string: an EOS or stop token id
        and "".join(e.token for e in entries) != text
    ):
        entries = entries[:-1]
    return tuple(entries)


def _token_counts(parsed: Sequence[Parsed], total: Any) -> list[int]:
    """Exact lengths from token ids or logprobs, else the usage total shared evenly."""
    exact = [
        len(ids) if ids is not None else len(entries) if entries is not None else None
        for _, _, ids, entries in parsed
    ]
    if all(c is not None for c in exact):
        return exact  # type: ignore[return-value]
    total = total if isinstance(total, int) and total >= 0 else 0
    share, extra = divmod(total, max(1, len(parsed)))
    return [share + (i < extra) for i in range(len(parsed))]
