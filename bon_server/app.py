"""The FastAPI application: lifespan (engine and verifier), error mapping, metrics.

``create_app(settings, generator=..., scorer=...)`` takes injected backends so
tests can serve a fake generator; with none given, the lifespan starts the
in-process vLLM engine and loads the verifier named in the settings.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .config import Settings
from .errors import BonError, error_body, type_for_status
from .generators import Generator, build_generator
from .metrics import Metrics
from .pipeline import BestOfN, Policy
from .routes import router
from .scorers import Scorer, build_scorer

log = logging.getLogger(__name__)

TRACKED_PATHS = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}


def create_app(
    settings: Settings | None = None,
    *,
    generator: Generator | None = None,
    scorer: Scorer | None = None,
    metrics: Metrics | None = None,
) -> FastAPI:
    settings = settings or Settings()
    metrics = metrics or Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gen, owned = generator, generator is None
        if gen is None:
            gen = build_generator(settings)
        verifier = scorer if scorer is not None else build_scorer(settings)
        policy = Policy(
            default_best_of=settings.default_best_of,
            max_best_of=settings.max_best_of,
            default_selector=settings.default_selector
            or ("verifier" if verifier is not None else "majority"),
            answer_rules=settings.answer_rules,
        )
        app.state.pipeline = BestOfN(gen, verifier, policy, metrics)
        if hasattr(gen, "num_unfinished"):
            metrics.engine_unfinished.set_function(gen.num_unfinished)
        log.info("serving %s (verifier: %s)", settings.model_name, settings.verifier or "none")
        try:
            yield
        finally:
            if owned and hasattr(gen, "shutdown"):
                gen.shutdown()

    app = FastAPI(title="bon", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = metrics
    app.include_router(router)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    _install_error_handlers(app)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(BonError)
    async def bon_error(request: Request, exc: BonError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        if first.get("type") == "json_invalid":
            message = (
                "We could not parse the JSON body of your request: "
                f"{first.get('ctx', {}).get('error', 'invalid JSON')}"
            )
            param = None
        elif param is None:
            message = "The request body must be a JSON object."
        elif first.get("type") == "missing":
            message = f"Missing required parameter: '{param}'."
        else:
            message = f"Invalid value for '{param}': {first.get('msg', 'invalid')}"
        body = error_body(message, "invalid_request_error", param=param)
        return JSONResponse(body, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"Invalid URL ({request.method} {request.url.path})"
        body = error_body(message, type_for_status(exc.status_code))
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse(error_body("internal server error", "internal_error"), status_code=500)


class MetricsMiddleware:
    """Latency, status and in-flight count of the Best-of-N endpoints, streams included."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = TRACKED_PATHS.get(scope.get("path", "")) if scope["type"] == "http" else None
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        status: dict[str, Any] = {"code": 499}  # nginx's "client closed request"

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        m = self.metrics
        m.in_flight.inc()
        start = time.perf_counter()
        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            if status["code"] == 499:  # no response started: ServerErrorMiddleware sends a 500
                status["code"] = 500
            raise
        finally:
            m.in_flight.dec()
            code = str(status["code"])
            m.requests.labels(endpoint, code).inc()
            m.request_duration.labels(endpoint, code).observe(time.perf_counter() - start)
