"""The FastAPI application: lifespan (engine and verifier), error mapping, metrics.

``create_app(settings, generator=..., scorer=...)`` takes injected backends so
tests can serve a fake generator; with none given, the lifespan starts the
in-process vLLM engine and loads the verifier named in the settings.

The layers a request passes, outermost first: ``RequestContextMiddleware``
(request id, access log), ``MetricsMiddleware``, ``GuardMiddleware`` (draining,
API keys, body size), then the routes, which plan the request and pass it
through the ``WorkGate`` (admission, deadline). On shutdown (after uvicorn's
``--shutdown-timeout`` grace), whatever is still in flight is aborted before the
engine stops.
"""

from __future__ import annotations

import asyncio
import inspect
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

from . import ui
from .admission import WorkGate
from .config import SERVING_FILE, Settings, world_defaults
from .errors import BonError, error_body, type_for_status
from .generators import Generator, build_generator
from .logs import RequestContextMiddleware
from .metrics import Metrics
from .pipeline import BestOfN, Policy
from .routes import router
from .scorers import Scorer, build_scorer
from .scorers.steps import resolve_separator
from .search import Adaptive, Prune, StepSearch
from .security import GuardMiddleware, error_response

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

    gate = WorkGate(
        max_sequences=settings.max_sequences_in_flight,
        admission_timeout=settings.admission_timeout,
        request_timeout=settings.request_timeout,
        metrics=metrics,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.draining = False
        gate.open()
        gen, owned = generator, generator is None
        if gen is None:
            gen = build_generator(settings)
        verifier, owned_scorer = scorer, scorer is None
        if verifier is None:
            verifier = build_scorer(settings)
        policy = Policy(
            default_best_of=settings.default_best_of,
            max_best_of=settings.max_best_of,
            default_selector=settings.default_selector
            or ("verifier" if verifier is not None else "majority"),
            answer_rules=settings.voting_rules,
            max_tokens_limit=settings.max_tokens_limit,
            adaptive=settings.adaptive,
            adaptive_params=Adaptive(
                wave=settings.adaptive_wave,
                min_candidates=settings.adaptive_min,
                confidence=settings.adaptive_confidence,
                threshold=settings.adaptive_threshold,
            ),
            prune=settings.prune,
            prune_params=Prune(
                every=settings.prune_every, keep=settings.prune_keep, rounds=settings.prune_rounds,
                distinct=settings.prune_distinct,
            ),
            score_while_decoding=settings.score_while_decoding,
            search=settings.search,
            search_params=StepSearch(
                method=settings.search if settings.search != "best_of_n" else "beam",
                width=settings.beam_width, max_steps=settings.search_max_steps,
                temperature=settings.search_temperature,
            ),
            step_separator=resolve_separator(settings.step_separator),
            tests_timeout_s=settings.tests_timeout_s,
            tests_concurrency=settings.tests_concurrency,
            tests_memory_mb=settings.tests_memory_mb,
        )
        app.state.pipeline = BestOfN(gen, verifier, policy, metrics)
        if hasattr(gen, "num_unfinished"):
            metrics.engine_unfinished.set_function(gen.num_unfinished)
        if hasattr(gen, "engine_metrics"):
            metrics.engine_families.source = gen.engine_metrics
        log.info(
            "serving %s (verifier: %s %s, default selector: %s%s)",
            settings.model_name,
            settings.verifier or "none",
            getattr(verifier, "kind", "") if verifier is not None else "",
            settings.default_selector or ("verifier" if settings.verifier else "majority"),
            f", from the policy's {SERVING_FILE}"
            if settings.world_defaults and world_defaults(settings.model)
            and settings.upstream is None
            else "",
        )
        if not settings.api_keys and settings.host not in ("127.0.0.1", "localhost", "::1"):
            log.warning(
                "listening on %s with no --api-key: anyone can spend this server's compute",
                settings.host,
            )
        try:
            yield
        finally:
            app.state.draining = True
            gate.close()  # requests still queued for admission get their 503 now
            aborted = await gate.abort_all()  # what uvicorn's graceful period did not finish
            if aborted:
                log.warning("aborted %d request(s) still in flight at shutdown", aborted)
            if owned and hasattr(gen, "shutdown"):
                gen.shutdown()
            await _aclose(gen if owned else None, verifier if owned_scorer else None)

    app = FastAPI(title="bon", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.gate = gate
    app.state.draining = False
    app.include_router(router)
    if settings.ui:
        app.include_router(ui.router)
    # added innermost first: the request passes context -> metrics -> guard -> routes
    app.add_middleware(
        GuardMiddleware,
        api_keys=settings.api_keys,
        metrics_require_key=settings.metrics_require_key,
        max_request_bytes=settings.max_request_bytes,
        metrics=metrics,
        public_paths=ui.PUBLIC_PATHS if settings.ui else (),
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(RequestContextMiddleware)
    _install_error_handlers(app)
    _tidy_openapi(
        app, bearer=bool(settings.api_keys), metrics_open=not settings.metrics_require_key
    )
    return app


async def drain(app: FastAPI, grace_s: float) -> None:
    """Refuse new work (503, /health too), give what is in flight ``grace_s`` seconds to
    finish, then abort the rest: their clients get a 503 (or a stream's error event)."""
    app.state.draining = True
    gate: WorkGate = app.state.gate
    gate.close()  # what is queued for admission gets a 503 now, never a ticket
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    if gate.tasks or gate.in_use:
        log.info("draining: %d request(s) in flight, %g s to finish", len(gate.tasks), grace_s)
    # in_use counts admissions granted but not yet started too: drain must not miss them
    while (gate.tasks or gate.in_use) and loop.time() < deadline:
        await asyncio.sleep(0.05)
    if gate.tasks or gate.in_use:
        log.warning("draining: aborting %d request(s) past the shutdown timeout", len(gate.tasks))
        await gate.abort_all()


async def _aclose(*resources: object) -> None:
    """Close HTTP clients and the like (an upstream generator, a remote scorer)."""
    for resource in resources:
        close = getattr(resource, "aclose", None)
        if close is None or not inspect.iscoroutinefunction(close):
            continue
        try:
            await close()
        except Exception:
            log.exception("closing %r failed", resource)


def _tidy_openapi(app: FastAPI, *, bearer: bool, metrics_open: bool) -> None:
    """The document the server really follows: errors are 400s (never FastAPI's 422), and
    with API keys on, a bearer scheme on every path but /health (and /metrics if open)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        for path, item in schema.get("paths", {}).items():
            for operation in item.values():
                operation.get("responses", {}).pop("422", None)
                if bearer and not (path == "/health" or (path == "/metrics" and metrics_open)):
                    operation["security"] = [{"bearer": []}]
        components = schema.setdefault("components", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.get("schemas", {}).pop(name, None)
        if bearer:
            components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(BonError)
    async def bon_error(request: Request, exc: BonError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ())]
        if loc and loc[0] in ("body", "query", "path", "header"):  # where, not which parameter
            loc = loc[1:]
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
        # RequestContextMiddleware answers errors raised before the response starts (with the
        # request id); this handler sees what is left: failures in the middle of a response
        log.exception("unhandled error on %s", request.url.path)
        return error_response(BonError("internal server error"))


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
