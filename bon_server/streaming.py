"""Server-sent events: keep-alive comments while candidates are sampled, the chosen
answer once selected, an error event when something fails, and always ``[DONE]``.

Nothing of the answer can be streamed before selection (it is not known which
candidate wins), so the stream holds the connection open with SSE comments and
then sends the selected choices as OpenAI chunks. If the client goes away,
Starlette cancels this generator and the ``finally`` cancels the pipeline task,
which aborts every candidate in the engine. A deadline or a shutdown that ends the
work while the client is still there becomes an error event, then ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

from .errors import BonError, ServiceUnavailableError, error_body

log = logging.getLogger(__name__)

T = TypeVar("T")
DONE = "data: [DONE]\n\n"
KEEPALIVE = ": keep-alive\n\n"
SHUTTING_DOWN = "the server is shutting down; the request was aborted"


def sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


async def stream_result(
    work: Awaitable[T],
    render: Callable[[T], Iterable[dict[str, Any]]],
    *,
    keepalive_s: float,
    on_disconnect: Callable[[], None] | None = None,
) -> AsyncIterator[str]:
    task = asyncio.ensure_future(work)
    finished = False
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=keepalive_s)
            if done:
                break
            yield KEEPALIVE
        try:
            for chunk in render(task.result()):
                yield sse(chunk)
        except asyncio.CancelledError:  # the work, not this stream, was cancelled: a shutdown
            yield sse(ServiceUnavailableError(SHUTTING_DOWN, code="draining").body())
        except BonError as exc:
            yield sse(exc.body())
        except Exception:
            log.exception("stream failed")
            yield sse(error_body("internal error while generating", "internal_error"))
        yield DONE
        finished = True
    finally:
        if not task.done():
            task.cancel()
        if not finished and on_disconnect is not None:
            on_disconnect()
