"""The gate in front of the routes: draining, API keys and the request-body bound.

``GuardMiddleware`` is plain ASGI so that it refuses before any route code (or
JSON parsing) runs, always in OpenAI's error shape:

* draining (SIGTERM received): the Best-of-N endpoints answer 503 with
  ``Connection: close``; what is in flight finishes;
* API keys: ``Authorization: Bearer <key>`` checked against every configured key
  in constant time (a SHA-256 of each side, ``hmac.compare_digest``); 401 with
  ``WWW-Authenticate: Bearer``. ``/health`` is always open, ``/metrics`` unless
  ``--metrics-require-key``, and the candidate page's files (``public_paths``: they hold
  no data; the page asks for the key itself);
* the body: more than ``--max-request-bytes`` is a 413, told by ``Content-Length``
  before a byte is read, or by counting a chunked body as it arrives.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection, Sequence

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import (
    AuthenticationError,
    BonError,
    PayloadTooLargeError,
    draining_error,
)
from .metrics import Metrics

WORK_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _digest(key: str | bytes) -> bytes:
    return hashlib.sha256(key if isinstance(key, bytes) else key.encode()).digest()


class KeyChecker:
    def __init__(self, keys: Sequence[str]) -> None:
        self._digests = [_digest(k) for k in keys]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def accepts(self, token: bytes) -> bool:
        candidate = _digest(token)
        ok = False
        for d in self._digests:  # no early exit: every key is compared
            ok |= hmac.compare_digest(candidate, d)
        return ok


def bearer_token(scope: Scope) -> bytes | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
            return None
    return None


def error_response(exc: BonError, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one serialisation of a ``BonError``: the exception handlers and the middlewares
    (which answer before any route runs) all send these bytes."""
    return JSONResponse(
        exc.body(), status_code=exc.status_code, headers={**exc.headers, **(headers or {})}
    )


async def send_error(send: Send, exc: BonError, headers: dict[str, str] | None = None) -> None:
    response = error_response(exc, headers)
    await send(
        {
            "type": "http.response.start",
            "status": response.status_code,
            "headers": response.raw_headers,
        }
    )
    await send({"type": "http.response.body", "body": response.body})


class GuardMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        api_keys: Sequence[str] = (),
        metrics_require_key: bool = False,
        max_request_bytes: int = 2_000_000,
        metrics: Metrics | None = None,
        public_paths: Collection[str] = (),
    ) -> None:
        self.app = app
        self.keys = KeyChecker(api_keys)
        self.open_paths = {"/health", *public_paths}
        if not metrics_require_key:
            self.open_paths.add("/metrics")
        self.max_bytes = max_request_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path in WORK_PATHS and getattr(scope["app"].state, "draining", False):
            await send_error(send, draining_error(), {"Connection": "close"})
            return
        if self.keys and path not in self.open_paths:
            token = bearer_token(scope)
            if token is None or not self.keys.accepts(token):
                if self.metrics is not None:
                    self.metrics.auth_failures.inc()
                message = (
                    "Incorrect API key provided."
                    if token is not None
                    else "You didn't provide an API key: send it as 'Authorization: Bearer KEY'."
                )
                exc = AuthenticationError(message, headers={"WWW-Authenticate": "Bearer"})
                await send_error(send, exc)
                return
        if scope.get("method") in BODY_METHODS:
            receive = await self._bounded_body(scope, receive, send)
            if receive is None:
                return
        await self.app(scope, receive, send)

    async def _bounded_body(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """Read the whole body (at most ``max_bytes``) and replay it; None: a 413 was sent."""
        too_large = PayloadTooLargeError(
            f"the request body exceeds this server's limit of {self.max_bytes} bytes"
        )
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    await send_error(send, too_large, {"Connection": "close"})
                    return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left mid-body
                first = message
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await send_error(send, too_large, {"Connection": "close"})
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                first = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return first
            return await receive()

        return replay
