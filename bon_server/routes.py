"""Thin HTTP handlers: wire request -> pipeline plan -> run -> wire response."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .errors import InvalidRequestError, ModelNotFoundError
from .pipeline import BestOfN
from .protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    ModelCard,
    ModelList,
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
from .streaming import stream_result

T = TypeVar("T")

ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 429, 500, 503, 504)}

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
    finally:
        if not task.done():
            task.cancel()
        watcher.cancel()
    if not task.done() or task.cancelled():
        request.app.state.metrics.client_disconnects.inc()
        raise ClientDisconnected
    return task.result()


def _disconnected_response() -> Response:
    return Response(status_code=499)


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse, responses=ERRORS)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    model = _check_model(request, body.model)
    pipeline = _pipeline(request)
    plan = pipeline.plan(
        body.to_prompt(),
        body.to_sampling(),
        n=body.n,
        best_of=body.best_of,
        selector=body.selector,
        aggregation=body.prm_aggregation,
    )
    meta = ResponseMeta(
        completion_id("chatcmpl"), now(), model, body.n, body.return_candidates, body.include_usage
    )
    if body.stream:
        metrics = request.app.state.metrics
        events = stream_result(
            pipeline.run(plan),
            lambda result: chat_chunks(result, meta),
            keepalive_s=request.app.state.settings.keepalive_interval_s,
            on_disconnect=metrics.client_disconnects.inc,
        )
        return StreamingResponse(events, media_type="text/event-stream")
    try:
        result = await _until_disconnect(request, pipeline.run(plan))
    except ClientDisconnected:
        return _disconnected_response()
    return JSONResponse(chat_response(result, meta).model_dump())


@router.post("/v1/completions", response_model=CompletionResponse, responses=ERRORS)
async def completions(body: CompletionRequest, request: Request) -> Response:
    model = _check_model(request, body.model)
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
        )
        for p in prompts
    ]
    echo = [p.text or "" for p in prompts] if body.echo else None
    meta = ResponseMeta(
        completion_id("cmpl"), now(), model, body.n, body.return_candidates, body.include_usage
    )
    work = asyncio.gather(*(pipeline.run(plan) for plan in plans))
    if body.stream:
        metrics = request.app.state.metrics
        events = stream_result(
            work,
            lambda results: completion_chunks(results, meta, echo),
            keepalive_s=request.app.state.settings.keepalive_interval_s,
            on_disconnect=metrics.client_disconnects.inc,
        )
        return StreamingResponse(events, media_type="text/event-stream")
    try:
        results = await _until_disconnect(request, work)
    except ClientDisconnected:
        return _disconnected_response()
    return JSONResponse(completion_response(results, meta, echo).model_dump())


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request) -> ModelList:
    settings = request.app.state.settings
    return ModelList(data=[ModelCard(id=settings.model_name, created=0, root=settings.model)])


@router.get("/v1/models/{model_id:path}", response_model=ModelCard, responses=ERRORS)
async def get_model(model_id: str, request: Request) -> ModelCard:
    settings = request.app.state.settings
    _check_model(request, model_id)
    return ModelCard(id=settings.model_name, created=0, root=settings.model)


@router.get("/health")
async def health(request: Request) -> Response:
    generator = _pipeline(request).generator
    check = getattr(generator, "check_health", None)
    try:
        if check is not None:
            await check()
    except Exception as exc:
        return JSONResponse({"status": "unhealthy", "detail": str(exc)}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
