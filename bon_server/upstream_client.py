"""One pooled HTTP client to a remote server, with retries, timeouts and the errors tree.

Proxy mode has two remote backends, and both talk through ``RemoteServer``: the upstream
generator (``generators/upstream.py``, any OpenAI-compatible server) and the remote
verifier (``scorers/remote.py``, a vLLM pooling server). This module owns the connection
pool, the timeouts, the retry policy and the translation of every failure into
``errors.py``; it knows nothing of prompts, candidates or scores.

Retries, with exponential backoff and jitter, happen on connection errors (refused,
reset, connect timeout, a peer that closed without answering) and on 5xx replies. They
never happen on a 4xx, nor on a read timeout: a request that timed out while being read
may still be running upstream, and the timeout is already the caller's whole budget.

    what happened                                  what the client of bon-server gets
    connection failed on every attempt             503 service_unavailable, Retry-After: 1
    no pooled connection free within the timeout   503 service_unavailable, Retry-After: 1
    5xx on every attempt, or a reply not JSON      502 upstream_error (upstream's message kept)
    no reply within ``timeout`` seconds            504 timeout
    4xx, ``relay_4xx=True`` (the client's doing)   the same status, message, param kept
    4xx, ``relay_4xx=False`` (our own request)     502 upstream_error

Cancelling a call (the client of bon-server went away) closes its connection: httpx
cannot reuse a half-read connection, and a vLLM server aborts a request whose
connection closes.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import httpx

from .errors import (
    BonError,
    DeadlineExceededError,
    InvalidRequestError,
    ServiceUnavailableError,
    UpstreamError,
    type_for_status,
)

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 5.0
RETRY_AFTER = {"Retry-After": "1"}


class RelayedError(BonError):
    """An upstream 4xx other than 400, passed on with its own status (401, 404, 429, ...)."""

    def __init__(self, status_code: int, message: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.status_code = status_code
        self.type = type_for_status(status_code)


def _error_fields(response: httpx.Response) -> tuple[str, str | None, Any]:
    """(message, param, code) from an OpenAI-shaped error body, or the raw text."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase, None, None
    error = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(error, dict):
        message = error.get("message") or error.get("detail") or str(error)
        return str(message), error.get("param"), error.get("code")
    return str(error), None, None


class RemoteServer:
    """A base URL, a pooled ``httpx.AsyncClient`` and a retry policy.

    ``transport`` replaces the network (tests pass an ``httpx.MockTransport``);
    ``name`` ("upstream", "verifier") prefixes every error message so a client can
    tell which hop failed.
    """

    def __init__(
        self,
        base_url: str,
        *,
        name: str = "upstream",
        api_key: str | None = None,
        timeout: float = 600.0,
        connect_timeout: float = 5.0,
        retries: int = 2,
        max_connections: int = 256,
        backoff_s: float = 0.2,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.name = name
        self.retries = retries
        self.backoff_s = backoff_s
        self.connect_timeout = connect_timeout
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            transport=transport,
        )
        self.attempts = 0  # every HTTP attempt made, retries included (tests read it)

    async def get(self, path: str, **kwargs: Any) -> Any:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, body: dict[str, Any], **kwargs: Any) -> Any:
        return await self.request("POST", path, json=body, **kwargs)

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        relay_4xx: bool = True,
        retries: int | None = None,
        timeout: float | httpx.Timeout | None = None,
    ) -> Any:
        """The decoded JSON reply of ``method path``; every failure is a ``BonError``."""
        retries = self.retries if retries is None else retries
        kwargs: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        where = f"{self.name} {method} {self.base_url}{path}"
        failure = ""
        for attempt in range(retries + 1):
            if attempt:
                await asyncio.sleep(self._backoff(attempt))
            self.attempts += 1
            try:
                response = await self.client.request(method, path, json=json, **kwargs)
            except httpx.PoolTimeout as exc:
                raise ServiceUnavailableError(
                    f"{self.name}: every connection to it is busy ({exc!r})", headers=RETRY_AFTER
                ) from exc
            except (httpx.ReadTimeout, httpx.WriteTimeout) as exc:
                raise DeadlineExceededError(f"{self.name} did not answer in time") from exc
            except httpx.TransportError as exc:  # refused, reset, connect timeout, closed
                failure = f"{type(exc).__name__}: {exc}" if str(exc) else repr(exc)
                log.warning("%s failed (attempt %d): %s", where, attempt + 1, failure)
                continue
            if response.status_code >= 500:
                message, _, _ = _error_fields(response)
                failure = f"HTTP {response.status_code}: {message}"
                log.warning("%s failed (attempt %d): %s", where, attempt + 1, failure)
                continue
            if response.status_code >= 400:
                raise self._client_error(response, relay_4xx)
            try:
                return response.json()
            except ValueError as exc:
                raise UpstreamError(f"{self.name} sent a reply that is not JSON") from exc
        attempts = f"{retries + 1} attempt{'s' if retries else ''}"
        if failure.startswith("HTTP "):
            raise UpstreamError(f"{self.name} failed after {attempts}: {failure}")
        raise ServiceUnavailableError(
            f"{self.name} at {self.base_url} is unreachable after {attempts}: {failure}",
            headers=RETRY_AFTER,
        )

    def _backoff(self, attempt: int) -> float:
        return min(MAX_BACKOFF_S, self.backoff_s * 2 ** (attempt - 1)) * (0.5 + random.random())

    def _client_error(self, response: httpx.Response, relay: bool) -> BonError:
        message, param, code = _error_fields(response)
        status = response.status_code
        if not relay:
            return UpstreamError(f"{self.name} refused the request (HTTP {status}): {message}")
        if not isinstance(code, str):
            code = None  # vLLM repeats the status as an int; OpenAI's codes are strings
        if status == 400:
            if "maximum context length" in message or "max_model_len" in message:
                code = "context_length_exceeded"
            return InvalidRequestError(message, param=param, code=code)
        headers = {}
        if "retry-after" in response.headers:
            headers["Retry-After"] = response.headers["retry-after"]
        return RelayedError(status, message, param=param, code=code, headers=headers)

    async def models(self, path: str = "/models", **kwargs: Any) -> list[dict[str, Any]]:
        """The ``data`` of an OpenAI ``/models`` listing."""
        body = await self.get(path, relay_4xx=False, **kwargs)
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise UpstreamError(f"{self.name}: {path} did not list models")
        return [m for m in data if isinstance(m, dict) and "id" in m]

    async def probe(self, path: str = "/models") -> list[dict[str, Any]]:
        """A quick liveness check for /health: one attempt, a short timeout."""
        timeout = httpx.Timeout(max(5.0, self.connect_timeout), connect=self.connect_timeout)
        return await self.models(path, retries=0, timeout=timeout)

    async def aclose(self) -> None:
        await self.client.aclose()


class ModelResolver:
    """The model name to send: the configured one, else the server's first listed model.

    Discovery is lazy (on the first request or health check, then cached), so bon-server
    can start before its upstream does; until the upstream answers, requests get 503.
    """

    def __init__(self, remote: RemoteServer, configured: str | None, path: str = "/models"):
        self.remote = remote
        self.configured = configured
        self.path = path
        self.card: dict[str, Any] | None = None
        self._lock = asyncio.Lock()

    @property
    def name(self) -> str | None:
        return self.configured or (self.card or {}).get("id")

    def remember(self, models: list[dict[str, Any]]) -> None:
        """Keep the card of the model in use from a listing; complain if it is absent."""
        if not models:
            raise UpstreamError(f"{self.remote.name} serves no model")
        if self.configured is None:
            self.card = models[0]
            return
        for card in models:
            if card["id"] == self.configured:
                self.card = card
                return
        served = ", ".join(m["id"] for m in models)
        raise UpstreamError(
            f"{self.remote.name} does not serve model {self.configured!r} (it serves: {served})"
        )

    async def resolve(self) -> str:
        if self.configured is not None:
            return self.configured
        if self.card is None:
            async with self._lock:
                if self.card is None:
                    self.remember(await self.remote.models(self.path))
        assert self.card is not None
        return self.card["id"]

    async def check(self) -> None:
        """Raise unless the server answers and serves the model (for /health)."""
        self.remember(await self.remote.probe(self.path))
