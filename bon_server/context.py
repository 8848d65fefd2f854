"""Per-request context that crosses layers without FastAPI: the request's id.

Set by ``logs.RequestContextMiddleware`` (the client's ``X-Request-Id`` or a minted one);
read by the access log and by the in-process generator, which puts it in the engine's
request id so vLLM's own logs can be matched to a client's request.
"""

from __future__ import annotations

import contextvars

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "bon_request_id", default=None
)
