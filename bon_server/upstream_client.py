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
    ``relay_4xx=True`` (the prompt is the client's):
      400, or 422                                  400 invalid_request_error, message, param
                                                   and code kept (context_length_exceeded)
      413, 429                                     the same status, Retry-After kept
      401, 403, 404, any other 4xx                 502 upstream_error: the upstream refused
                                                   bon-server's own request (its key, its
                                                   model), not the client's
    4xx, ``relay_4xx=False`` (our own request)     502 upstream_error

A client's message names the hop ("upstream", "verifier"), never its URL, which may be
an internal address or hold credentials; the log has the URL (less any user:pass@).

Cancelling a call (the client of bon-server went away) closes its connection: httpx
cannot reuse a half-read connection, and a vLLM server aborts a request whose
connection closes.
"""

from __future__ import annotations

import asyncio
import json as _json
import logging
import random
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from .config import Settings

from .errors import (
    BonError,
    DeadlineExceededError,
    InvalidRequestError,
    RelayedError,
    ServiceUnavailableError,
    UpstreamError,
)

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 5.0
RETRY_AFTER = {"Retry-After": "1"}
RELAYED_STATUSES = (413, 429)  # passed on as themselves; 400 and 422 become our 400

__all__ = ["RELAYED_STATUSES", "ModelResolver", "RelayedError", "RemoteServer"]


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
        url = httpx.URL(self.base_url)  # for the log: the address, never user:pass@
        self.log_url = str(url.copy_with(username=None, password=None) if url.userinfo else url)
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

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        base_url: str,
        *,
        name: str,
        api_key: str | None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> RemoteServer:
        """A server reached with the settings' timeouts, retries and pool size."""
        return cls(
            base_url,
            name=name,
            api_key=api_key,
            timeout=settings.upstream_timeout,
            connect_timeout=settings.upstream_connect_timeout,
            retries=settings.upstream_retries,
            max_connections=settings.upstream_max_connections,
            transport=transport,
        )

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
        response = await self._send(method, path, json, relay_4xx, retries, timeout)
        try:
            return response.json()
        except ValueError as exc:
            raise UpstreamError(f"{self.name} sent a reply that is not JSON") from exc

    async def stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[Any]:
        """The decoded ``data:`` events of a streamed (server-sent events) reply to POST
        ``path``, up to ``[DONE]``. Opening it fails, and is retried, as ``request`` does;
        once events flow, a broken or truncated stream is a 502 (never retried: the
        upstream may have generated), an error event its 400 or a 502, a silence longer
        than the timeout a 504. Closing the iteration closes the connection, which makes a
        vLLM upstream abort the request."""
        response = await self._send("POST", path, body, True, None, None, stream=True)
        try:
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators, comments, event names
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                try:
                    event = _json.loads(data)
                except ValueError:
                    raise UpstreamError(f"{self.name} streamed an event that is not JSON") from None
                if isinstance(event, dict) and event.get("error") is not None:
                    raise self._event_error(event["error"])
                yield event
            raise UpstreamError(f"{self.name} ended its stream without [DONE]")
        except (httpx.ReadTimeout, httpx.WriteTimeout) as exc:
            raise DeadlineExceededError(f"{self.name} did not answer in time") from exc
        except httpx.TransportError as exc:
            raise UpstreamError(f"{self.name} broke off its stream: {type(exc).__name__}") from exc
        finally:
            await response.aclose()

    async def _send(
        self,
        method: str,
        path: str,
        json: dict[str, Any] | None,
        relay_4xx: bool,
        retries: int | None,
        timeout: float | httpx.Timeout | None,
        *,
        stream: bool = False,
    ) -> httpx.Response:
        """A reply below 400 to ``method path``, after the retries; every failure is a
        ``BonError``. With ``stream`` its body is still to be read (and closed)."""
        retries = self.retries if retries is None else retries
        kwargs: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        where = f"{self.name} {method} {self.log_url}{path}"
        failure = failure_kind = ""
        for attempt in range(retries + 1):
            if attempt:
                await asyncio.sleep(self._backoff(attempt))
            self.attempts += 1
            try:
                built = self.client.build_request(method, path, json=json, **kwargs)
                response = await self.client.send(built, stream=stream)
                if stream and response.status_code >= 400:
                    try:
                        await response.aread()  # the error body, for its message
                    finally:
                        await response.aclose()
            except httpx.PoolTimeout as exc:
                raise ServiceUnavailableError(
                    f"{self.name}: every connection to it is busy", headers=RETRY_AFTER
                ) from exc
            except (httpx.ReadTimeout, httpx.WriteTimeout) as exc:
                raise DeadlineExceededError(f"{self.name} did not answer in time") from exc
            except httpx.TransportError as exc:  # refused, reset, connect timeout, closed
                failure = f"{type(exc).__name__}: {exc}" if str(exc) else repr(exc)
                failure_kind = type(exc).__name__  # its text may hold the host: log only
                log.warning("%s failed (attempt %d): %s", where, attempt + 1, failure)
                continue
            if response.status_code >= 500:
                message, _, _ = _error_fields(response)
                failure = f"HTTP {response.status_code}: {message}"
                log.warning("%s failed (attempt %d): %s", where, attempt + 1, failure)
                continue
            if response.status_code >= 400:
                raise self._client_error(response, relay_4xx, where)
            return response
        attempts = f"{retries + 1} attempt{'s' if retries else ''}"
        if failure.startswith("HTTP "):
            raise UpstreamError(f"{self.name} failed after {attempts}: {failure}")
        # The URL (an internal address, perhaps user:pass@) goes to the log, not the client.
        log.warning("%s is unreachable after %s: %s", where, attempts, failure)
        raise ServiceUnavailableError(
            f"{self.name} is unreachable after {attempts}: {failure_kind}",
            headers=RETRY_AFTER,
        )

    def _event_error(self, error: Any) -> BonError:
        """An error event in a stream (vLLM: ``{"error": {"message", "code": 400, ...}}``):
        a 400 stays the client's 400, anything else is the upstream's failure."""
        if not isinstance(error, dict):
            return UpstreamError(f"{self.name} failed mid-stream: {str(error)[:500]}")
        message = str(error.get("message") or error)[:500]
        if error.get("code") in (400, "400") or error.get("type") == "BadRequestError":
            return InvalidRequestError(message, param=error.get("param"))
        return UpstreamError(f"{self.name} failed mid-stream: {message}")

    def _backoff(self, attempt: int) -> float:
        return min(MAX_BACKOFF_S, self.backoff_s * 2 ** (attempt - 1)) * (0.5 + random.random())

    def _client_error(self, response: httpx.Response, relay: bool, where: str) -> BonError:
        message, param, code = _error_fields(response)
        status = response.status_code
        if not relay:
            return UpstreamError(f"{self.name} refused the request (HTTP {status}): {message}")
        if not isinstance(code, str):
            code = None  # vLLM repeats the status as an int; OpenAI's codes are strings
        if status in (400, 422):  # our API answers a bad request with 400, never 422
            if "maximum context length" in message or "max_model_len" in message:
                code = "context_length_exceeded"
            return InvalidRequestError(message, param=param, code=code)
        if status in RELAYED_STATUSES:
            headers = {}
            if "retry-after" in response.headers:
                headers["Retry-After"] = response.headers["retry-after"]
            return RelayedError(status, message, param=param, code=code, headers=headers)
        # 401, 403, 404, ...: about bon-server's own key or model (--upstream-api-key,
        # --upstream-model), not the client's; passing the status on would mislead.
        log.warning("%s refused bon-server's request (HTTP %d): %s", where, status, message)
        return UpstreamError(f"{self.name} refused bon-server's request (HTTP {status}): {message}")

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
        self._discovery: asyncio.Task[None] | None = None  # the one in flight, shared

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
        """The model's name; while unknown, every caller awaits ONE shared discovery.

        Its failure (after its retries) is every waiter's; the next call starts afresh.
        A waiter that is cancelled leaves the discovery running for the others.
        """
        if self.configured is not None:
            return self.configured
        if self.card is None:
            if self._discovery is None:
                self._discovery = asyncio.ensure_future(self._discover())
                self._discovery.add_done_callback(self._discovered)
            await asyncio.shield(self._discovery)
        assert self.card is not None
        return self.card["id"]

    async def _discover(self) -> None:
        self.remember(await self.remote.models(self.path))

    def _discovered(self, task: asyncio.Task[None]) -> None:
        if self._discovery is task:
            self._discovery = None
        if not task.cancelled():
            task.exception()  # retrieved, even when every waiter has gone

    async def check(self) -> None:
        """Raise unless the server answers and serves the model (for /health)."""
        self.remember(await self.remote.probe(self.path))
