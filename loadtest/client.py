"""One streamed request against an OpenAI-compatible endpoint, timed as ``vllm bench
serve`` times it.

- ttft: request sent -> first chunk that carries content (``: keep-alive`` comments and
  the empty role delta do not count);
- itl: the gaps between consecutive content chunks;
- e2el: request sent -> the last chunk with choices (the usage chunk carries no token);
- output tokens: ``usage.completion_tokens`` (for Best-of-N: every candidate's tokens).

A ``bon`` endpoint is asked for ``n=1, best_of=B, return_candidates=true``; a ``plain``
endpoint (e.g. vLLM itself) for ``n=B`` and no selection: its choice 0 is the floor's
answer and all its choices give the oracle coverage.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from .datasets import Item

Kind = Literal["auto", "bon", "plain"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str
    base_url: str
    kind: Kind = "auto"
    model: str | None = None
    api_key: str | None = None
    # Best-of-N request fields this endpoint always sends (``--adaptive``: adaptive=true)
    extra: tuple[tuple[str, Any], ...] = ()

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def parse_compare(spec: str, api_key: str | None = None) -> Endpoint:
    """``NAME=URL`` or ``NAME=bon:URL`` / ``NAME=plain:URL`` (the kind is probed if absent)."""
    name, sep, rest = spec.partition("=")
    if not sep or not name or not rest:
        raise ValueError(f"--compare wants NAME=URL, got {spec!r}")
    kind: Kind = "auto"
    for k in ("bon", "plain"):
        if rest.startswith(k + ":"):
            kind, rest = k, rest[len(k) + 1 :]  # type: ignore[assignment]
    if not rest.startswith(("http://", "https://")):
        raise ValueError(f"--compare {name}: URL must start with http:// or https://")
    return Endpoint(name, rest.rstrip("/"), kind, api_key=api_key)


@dataclass(frozen=True, slots=True)
class RequestSpec:
    best_of: int
    max_tokens: int
    temperature: float
    selector: str | None = None
    seed: int | None = None
    return_candidates: bool = True  # needed for oracle coverage; off to time the bare answer
    stream: bool = True  # False: one JSON body (a plain server's fastest way to return n)


@dataclass(slots=True)
class RequestResult:
    ok: bool = False
    failure: str | None = None  # HTTP status as text, "stream_error", "timeout", an exception
    error: str | None = None
    start: float = 0.0  # perf_counter at send
    ttft: float | None = None
    e2el: float | None = None
    itl: list[float] = field(default_factory=list)
    output_tokens: int | None = None
    prompt_tokens: int | None = None
    texts: dict[int, str] = field(default_factory=dict)  # choice index -> text
    bon: dict[str, Any] | None = None
    correct: bool | None = None
    oracle: bool | None = None

    @property
    def tpot(self) -> float | None:
        """(e2el - ttft) / (output tokens - 1), as vLLM defines it; None for < 2 tokens."""
        if not self.ok or self.ttft is None or self.e2el is None:
            return None
        if self.output_tokens is None or self.output_tokens < 2:
            return None
        return (self.e2el - self.ttft) / (self.output_tokens - 1)


def build_request(endpoint: Endpoint, item: Item, spec: RequestSpec) -> tuple[str, dict]:
    body: dict[str, Any] = {
        "model": endpoint.model,
        "max_tokens": spec.max_tokens,
        "temperature": spec.temperature,
        "stream": spec.stream,
    }
    if spec.stream:
        body["stream_options"] = {"include_usage": True}
    if item.messages is not None:
        path, body["messages"] = "/v1/chat/completions", list(item.messages)
    else:
        path, body["prompt"] = "/v1/completions", item.prompt
    if endpoint.kind == "plain":
        body["n"] = spec.best_of
    else:
        body.update(n=1, best_of=spec.best_of)
        if spec.return_candidates:
            body["return_candidates"] = True
        if spec.selector:
            body["selector"] = spec.selector
        body.update(endpoint.extra)
    if spec.seed is not None:
        body["seed"] = spec.seed
    return endpoint.base_url + path, body


def _content(choice: dict[str, Any]) -> str:
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return delta.get("content") or ""
    return choice.get("text") or ""


async def send(
    client: httpx.AsyncClient,
    endpoint: Endpoint,
    item: Item,
    spec: RequestSpec,
    timeout_s: float,
) -> RequestResult:
    """Send one streamed request and grade it; never raises for the server's failures."""
    url, body = build_request(endpoint, item, spec)
    result = RequestResult()
    try:
        async with asyncio.timeout(timeout_s):
            read = _stream if spec.stream else _whole
            await read(client, url, body, endpoint.headers, result)
    except TimeoutError:
        result.ok, result.failure, result.error = False, "timeout", f"no answer in {timeout_s} s"
    except httpx.HTTPError as exc:
        result.ok, result.failure, result.error = False, type(exc).__name__, str(exc)
    if result.ok:
        grade(result, item)
    return result


async def _whole(
    client: httpx.AsyncClient, url: str, body: dict, headers: dict, result: RequestResult
) -> None:
    """A non-streamed request: ttft and e2el are both the time to the whole body."""
    result.start = start = time.perf_counter()
    response = await client.post(url, json=body, headers=headers)
    result.e2el = result.ttft = time.perf_counter() - start
    if response.status_code != 200:
        result.failure, result.error = str(response.status_code), response.text[:500]
        return
    data = response.json()
    for choice in data.get("choices") or []:
        message = choice.get("message")
        text = message.get("content") if isinstance(message, dict) else choice.get("text")
        result.texts[choice.get("index", 0)] = text or ""
    if isinstance(data.get("bon"), dict):
        result.bon = data["bon"]
    usage = data.get("usage") or {}
    result.output_tokens = usage.get("completion_tokens")
    result.prompt_tokens = usage.get("prompt_tokens")
    result.ok = True


async def _stream(
    client: httpx.AsyncClient, url: str, body: dict, headers: dict, result: RequestResult
) -> None:
    result.start = start = time.perf_counter()
    last_content = start
    async with client.stream("POST", url, json=body, headers=headers) as response:
        if response.status_code != 200:
            text = (await response.aread()).decode(errors="replace")
            result.failure, result.error = str(response.status_code), text[:500]
            return
        done = False
        async for line in response.aiter_lines():
            if not line or line.startswith(":"):  # blank separators, keep-alive comments
                continue
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                done = True
                break
            now = time.perf_counter()
            data = json.loads(payload)
            if "error" in data:
                result.failure = "stream_error"
                result.error = json.dumps(data["error"])[:500]
                return
            if result.bon is None and isinstance(data.get("bon"), dict):
                result.bon = data["bon"]
            choices = data.get("choices") or []
            if choices:
                result.e2el = now - start
                pieces = [(c.get("index", 0), _content(c)) for c in choices]
                if any(text for _, text in pieces):
                    if result.ttft is None:
                        result.ttft = now - start
                    else:
                        result.itl.append(now - last_content)
                    last_content = now
                for index, text in pieces:
                    result.texts[index] = result.texts.get(index, "") + text
            elif isinstance(data.get("usage"), dict):
                result.output_tokens = data["usage"].get("completion_tokens")
                result.prompt_tokens = data["usage"].get("prompt_tokens")
    if not done or result.e2el is None:
        result.failure, result.error = "incomplete", "the stream ended without choices or [DONE]"
        return
    if result.ttft is None:  # an empty answer: its first chunk is its first token
        result.ttft = result.e2el
    result.ok = True


def grade(result: RequestResult, item: Item) -> None:
    """Accuracy on the returned choice 0; oracle coverage over every candidate seen (the
    item's world checks them, or its reference answer)."""
    right = item.is_right

    result.correct = right(result.texts.get(0, ""))
    if result.bon is not None:
        candidates = result.bon.get("candidates")
        result.oracle = None if candidates is None else any(right(c["text"]) for c in candidates)
    else:
        result.oracle = any(right(t) for t in result.texts.values())


# ------------------------------------------------------------------ endpoint probing


async def resolve(client: httpx.AsyncClient, endpoint: Endpoint, timeout_s: float) -> Endpoint:
    """Fill in the model (the first of /v1/models) and the kind (does a 1-token request come
    back with a ``bon`` object?)."""
    model, kind = endpoint.model, endpoint.kind
    if model is None:
        r = await client.get(
            f"{endpoint.base_url}/v1/models", headers=endpoint.headers, timeout=timeout_s
        )
        r.raise_for_status()
        model = r.json()["data"][0]["id"]
    if kind == "auto":
        r = await client.post(
            f"{endpoint.base_url}/v1/completions",
            json={"model": model, "prompt": "1", "max_tokens": 1, "n": 1},
            headers=endpoint.headers,
            timeout=timeout_s,
        )
        r.raise_for_status()
        kind = "bon" if "bon" in r.json() else "plain"
    return dataclasses.replace(endpoint, kind=kind, model=model)


async def scrape(client: httpx.AsyncClient, endpoint: Endpoint) -> str | None:
    """The endpoint's /metrics text, or None when it has none."""
    try:
        r = await client.get(f"{endpoint.base_url}/metrics", headers=endpoint.headers, timeout=10)
    except httpx.HTTPError:
        return None
    return r.text if r.status_code == 200 else None
