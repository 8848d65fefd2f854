"""Request ids and the access log: one JSON line per request on the ``bon.access`` logger.

``RequestContextMiddleware`` (the outermost layer) takes the client's
``X-Request-Id`` when it is sane (at most 128 of ``A-Z a-z 0-9 . _ : -``) or mints
one, echoes it on the response, keeps it in a context variable for code that
wants to tag its own work with it, and when the request ends logs::

    {"ts": ..., "id": ..., "method": "POST", "path": "/v1/chat/completions",
     "status": 200, "latency_ms": 412.3, "client": "10.0.0.7", "stream": false,
     "best_of": 16, "n": 1, "prompts": 1, "selector": "verifier",
     "prompt_tokens": 31, "completion_tokens": 802, "disconnected": false,
     "timed_out": false, "error": null}

The routes fill the Best-of-N fields into the request's ``AccessRecord``. Prompt
and completion text are logged only with ``--log-content``. ``/health`` and
``/metrics`` are logged at DEBUG, everything else at INFO.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .context import request_id_var
from .errors import BonError, DeadlineExceededError
from .security import send_error
from .types import BestOfNResult, Prompt

access_log = logging.getLogger("bon.access")
log = logging.getLogger(__name__)

_SAFE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
QUIET_PATHS = frozenset({"/health", "/metrics"})
STATE_KEY = "bon_access"


def accept_request_id(value: str | None) -> str:
    if value and _SAFE_ID.fullmatch(value):
        return value
    return uuid.uuid4().hex


@dataclasses.dataclass(slots=True)
class AccessRecord:
    """What a route knows about its request; the middleware adds the HTTP facts."""

    stream: bool | None = None
    best_of: int | None = None
    n: int | None = None
    prompts: int | None = None
    selector: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    disconnected: bool = False
    timed_out: bool = False
    error: str | None = None
    prompt: Any = None  # only with --log-content
    completion: Any = None  # only with --log-content

    def fields(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if out["prompt"] is None:
            del out["prompt"]
        if out["completion"] is None:
            del out["completion"]
        return out


def access_record(request: Request) -> AccessRecord:
    record = request.scope.get("state", {}).get(STATE_KEY)
    return record if record is not None else AccessRecord()


def _prompt_content(prompt: Prompt) -> Any:
    if prompt.messages is not None:
        return [{"role": m.role, "content": m.content} for m in prompt.messages]
    return prompt.text if prompt.text is not None else list(prompt.token_ids or ())


def note_outcome(
    record: AccessRecord,
    outcome: BestOfNResult | Sequence[BestOfNResult] | BaseException | None,
    *,
    n: int,
    log_content: bool,
    prompts: Sequence[Prompt] = (),
) -> None:
    """Fill tokens (and, with --log-content, text) from a finished request's results."""
    if isinstance(outcome, BaseException):
        record.timed_out = isinstance(outcome, DeadlineExceededError)
        record.error = outcome.type if isinstance(outcome, BonError) else type(outcome).__name__
        return
    if outcome is None:
        return
    results = [outcome] if isinstance(outcome, BestOfNResult) else list(outcome)
    record.prompt_tokens = sum(r.prompt_tokens for r in results)
    record.completion_tokens = sum(r.completion_tokens for r in results)
    if log_content:
        contents = [_prompt_content(p) for p in prompts]
        record.prompt = contents[0] if len(contents) == 1 else contents
        record.completion = [r.candidates[i].text for r in results for i in r.order[:n]]


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = None
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                given = value.decode("latin-1")
                break
        request_id = accept_request_id(given)
        record = AccessRecord()
        scope.setdefault("state", {})[STATE_KEY] = record
        scope["state"]["request_id"] = request_id
        token = request_id_var.set(request_id)
        status: dict[str, int | None] = {"code": None}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = [
                    (k, v) for k, v in message.get("headers", ()) if k.lower() != b"x-request-id"
                ]
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        start = time.perf_counter()
        failed = False
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:  # a CancelledError (shutdown cut it off) stays a 499
            failed = True
            if status["code"] is not None:  # mid-response: nothing more can be sent
                raise
            # answer here, inside this layer, so the 500 carries the request id (Starlette's
            # ServerErrorMiddleware sits outside every user middleware and would not)
            log.exception("unhandled error on %s", scope.get("path", ""))
            if record.error is None:
                record.error = "internal_error"
            await send_error(send_with_id, BonError("internal server error"))
        finally:
            request_id_var.reset(token)
            code = status["code"]
            if code is None:
                code = 500 if failed else 499
            path = scope.get("path", "")
            client = scope.get("client")
            line = {
                "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "id": request_id,
                "method": scope.get("method"),
                "path": path,
                "status": code,
                "latency_ms": round((time.perf_counter() - start) * 1000, 1),
                "client": client[0] if client else None,
            }
            if record.best_of is not None or record.error is not None:
                line.update(record.fields())
            level = logging.DEBUG if path in QUIET_PATHS else logging.INFO
            access_log.log(level, json.dumps(line, separators=(",", ":"), default=str))
