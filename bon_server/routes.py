"""Thin HTTP handlers: wire request -> pipeline plan -> admission -> run -> wire response.

Every client mistake (validation, limits, context length, a request larger than
the admission bound) is found before the request queues or any engine work
starts, so even a streaming request gets a plain 4xx.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from functools import partial
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .admission import Ticket, WorkGate
from .concurrency import run_all
from .errors import (
    InvalidRequestError,
    ModelNotFoundError,
    NotFoundError,
    ServiceUnavailableError,
)
from .logs import AccessRecord, access_record, note_outcome
from .pipeline import BestOfN, Plan
from .protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    HealthStatus,
    ModelCard,
    ModelList,
    ProblemCard,
    completion_id,
    now,
)
from .responses import (
    ResponseMeta,
    chat_chunks,
    chat_response,
    completion_chunks,
    completion_response,
)
from .scorers.steps import resolve_separator
from .streaming import SHUTTING_DOWN, stream_result
from .tasks import TASKS
from .types import Prompt

T = TypeVar("T")

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 429, 500, 503, 504)
}
# 200 is JSON, or server-sent events with `stream: true`: each event's data is a JSON chunk,
# an error object, or [DONE]
SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
}
WORK_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    200: {"content": {"text/event-stream": {"schema": SSE_EVENT}}},
}
READ_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (401, 404)
}

log = logging.getLogger(__name__)
router = APIRouter()


def _pipeline(request: Request) -> BestOfN:
    return request.app.state.pipeline


def _check_model(request: Request, model: str | None) -> str:
    settings = request.app.state.settings
    if model is not None and model not in (settings.model_name, settings.model):
        raise ModelNotFoundError(f"The model `{model}` does not exist.", param="model")
    return settings.model_name


class ClientDisconnected(Exception):
    pass


async def _until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` unless the client goes away first; then cancel it (aborting the engine).

    A non-streaming handler is not cancelled by Starlette on disconnect, so it
    listens for ``http.disconnect`` itself (the body has been read by now).
    """
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        client_left = watcher.done()
    finally:
        if not task.done():
            task.cancel()
        watcher.cancel()
    if not client_left and task.cancelled():  # aborted by shutdown, not by the client
        raise ServiceUnavailableError(SHUTTING_DOWN, code="draining")
    if client_left and not (task.done() and not task.cancelled()):
        request.app.state.metrics.client_disconnects.inc()
        raise ClientDisconnected
    return task.result()


async def _admit(request: Request, gate: WorkGate, cost: int) -> Ticket:
    ticket = gate.try_admit(cost)  # the common case: room now, no tasks spawned
    if ticket is not None:
        return ticket
    admit = asyncio.ensure_future(gate.admit(cost))
    try:
        return await _until_disconnect(request, admit)
    except BaseException:
        # the client left (or shutdown) just as the grant came: nobody will use that ticket
        admit.add_done_callback(_release_unclaimed)
        raise


def _release_unclaimed(task: asyncio.Task[Ticket]) -> None:
    if not task.cancelled() and task.exception() is None:
        task.result().release()


async def _serve(
    request: Request,
    *,
    stream: bool,
    n: int,
    plans: Sequence[Plan],
    prompts: Sequence[Prompt],
    work: Callable[[], Coroutine[Any, Any, T]],
    full: Callable[[T], dict[str, Any]],
    chunks: Callable[[T], Iterable[dict[str, Any]]],
) -> Response:
    """Admission, the deadline and disconnects around the pipeline's work; one shape for both
    endpoints. ``work`` is only called once the request is admitted."""
    state = request.app.state
    gate: WorkGate = state.gate
    record = access_record(request)
    record.stream, record.n, record.prompts = stream, n, len(plans)
    record.best_of, record.selector = plans[0].best_of, plans[0].selector
    try:
        ticket = await _admit(request, gate, sum(p.best_of for p in plans))
    except ClientDisconnected:
        return _disconnected_response(record)
    task = gate.start(work(), ticket)
    log_content = state.settings.log_content
    task.add_done_callback(partial(_note, record, n=n, log_content=log_content, prompts=prompts))
    if stream:
        events = stream_result(
            task,
            chunks,
            keepalive_s=state.settings.keepalive_interval_s,
            on_disconnect=partial(_stream_disconnected, state.metrics, record),
        )
        return StreamingResponse(events, media_type="text/event-stream")
    try:
        result = await _until_disconnect(request, task)
    except ClientDisconnected:
        return _disconnected_response(record)
    return JSONResponse(full(result))


def _note(
    record: AccessRecord, task: asyncio.Task, *, n: int, log_content: bool, prompts: Sequence
) -> None:
    if task.cancelled():
        record.error = "cancelled"
        return
    outcome = task.exception() or task.result()
    note_outcome(record, outcome, n=n, log_content=log_content, prompts=prompts)


def _stream_disconnected(metrics: Any, record: AccessRecord) -> None:
    record.disconnected = True
    metrics.client_disconnects.inc()


def _disconnected_response(record: AccessRecord) -> Response:
    record.disconnected = True
    return Response(status_code=499)


def _separator(request: Request) -> str:
    return resolve_separator(request.app.state.settings.step_separator)


def _limits(request: Request) -> tuple[int, int]:
    settings = request.app.state.settings
    return settings.max_messages, settings.max_message_chars


@router.post(
    "/v1/chat/completions", response_model=ChatCompletionResponse, responses=WORK_RESPONSES
)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    model = _check_model(request, body.model)
    body.check_size(*_limits(request))
    pipeline = _pipeline(request)
    prompt = body.to_prompt()
    plan = pipeline.plan(
        prompt,
        body.to_sampling(),
        n=body.n,
        best_of=body.best_of,
        selector=body.selector,
        aggregation=body.prm_aggregation,
        **body.search_options(),
    )
    meta = ResponseMeta(
        completion_id("chatcmpl"), now(), model, body.n, body.return_candidates, body.include_usage,
        _separator(request),
    )
    return await _serve(
        request,
        stream=body.stream,
        n=body.n,
        plans=[plan],
        prompts=[prompt],
        work=partial(pipeline.run, plan),
        full=lambda result: chat_response(result, meta).model_dump(),
        chunks=lambda result: chat_chunks(result, meta),
    )


@router.post("/v1/completions", response_model=CompletionResponse, responses=WORK_RESPONSES)
async def completions(body: CompletionRequest, request: Request) -> Response:
    model = _check_model(request, body.model)
    body.check_size(*_limits(request))
    pipeline = _pipeline(request)
    prompts = body.to_prompts()
    if body.echo and (body.logprobs is not None or any(p.text is None for p in prompts)):
        raise InvalidRequestError(
            "echo is supported for text prompts without logprobs only", param="echo"
        )
    sampling = body.to_sampling()
    plans = [
        pipeline.plan(
            p,
            sampling,
            n=body.n,
            best_of=body.best_of,
            selector=body.selector,
            aggregation=body.prm_aggregation,
            **body.search_options(),
        )
        for p in prompts
    ]
    echo = [p.text or "" for p in prompts] if body.echo else None
    meta = ResponseMeta(
        completion_id("cmpl"), now(), model, body.n, body.return_candidates, body.include_usage,
        _separator(request),
    )

    async def work() -> list:
        return await run_all([partial(pipeline.run, plan) for plan in plans])

    return await _serve(
        request,
        stream=body.stream,
        n=body.n,
        plans=plans,
        prompts=prompts,
        work=work,
        full=lambda results: completion_response(results, meta, echo).model_dump(),
        chunks=lambda results: completion_chunks(results, meta, echo),
    )


def _model_card(settings: Any) -> ModelCard:
    """The served model; its root is the local path in-process, or the upstream model's name
    in proxy mode (never the upstream URL, which is internal and may carry credentials)."""
    if settings.upstream is not None:
        root = settings.upstream_model or settings.model_name
    else:
        root = settings.model
    return ModelCard(id=settings.model_name, created=0, root=root)


@router.get("/v1/models", response_model=ModelList, responses=READ_ERRORS)
async def list_models(request: Request) -> ModelList:
    settings = request.app.state.settings
    return ModelList(data=[_model_card(settings)])


@router.get("/v1/models/{model_id:path}", response_model=ModelCard, responses=READ_ERRORS)
async def get_model(model_id: str, request: Request) -> ModelCard:
    settings = request.app.state.settings
    _check_model(request, model_id)
    return _model_card(settings)


MAX_SEED = 2**31 - 1


@router.get(
    "/v1/bon/problem",
    response_model=ProblemCard,
    responses={**READ_ERRORS, 400: {"model": ErrorResponse}},
)
async def draw_problem(
    request: Request, seed: Annotated[int | None, Query(ge=0, le=MAX_SEED)] = None
) -> ProblemCard:
    """A fresh problem of the served world (``seed``: the same problem every time)."""
    unknown = sorted(set(request.query_params) - {"seed"})
    if unknown:
        raise InvalidRequestError(f"unknown query parameter {unknown[0]!r}", param=unknown[0])
    world = request.app.state.settings.served_world
    task = TASKS.get(world or "")
    if task is None:
        raise NotFoundError(
            "this server does not know which world its model solves"
            + (f" ({world!r} is not one of: {', '.join(TASKS)})" if world else "")
            + "; start it with --world NAME"
        )
    if seed is None:
        seed = random.randrange(MAX_SEED + 1)
    return ProblemCard(world=task.name, seed=seed, prompt=task.problems(1, seed)[0].question)


@router.get("/health", response_model=HealthStatus, responses={503: {"model": HealthStatus}})
async def health(request: Request) -> Response:
    """200 while serving; 503 once the engine has died or the server is draining."""
    if getattr(request.app.state, "draining", False):
        return JSONResponse({"status": "draining"}, status_code=503)
    pipeline = _pipeline(request)
    for what, backend in (("policy", pipeline.generator), ("verifier", pipeline.scorer)):
        check = getattr(backend, "check_health", None)
        try:
            if check is not None:
                await check()
        except Exception as exc:
            # /health is open to anyone: the exception's text may name an upstream's address
            # or carry its credentials, so it goes to the log only
            log.warning("health check of the %s failed: %s", what, exc)
            detail = f"the {what} backend is not answering"
            return JSONResponse({"status": "unhealthy", "detail": detail}, status_code=503)
    return JSONResponse({"status": "ok"})


METRICS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
    401: {"model": ErrorResponse},
}


@router.get("/metrics", response_class=PlainTextResponse, responses=METRICS_RESPONSES)
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
