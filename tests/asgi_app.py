"""The scripted app over httpx's ASGI transport: several requests at once in one event loop.

``running(app)`` runs the app's lifespan and yields a client; ``scenario`` runs an async
test body (no asyncio plugin needed). ``served(app)`` puts the same app behind real uvicorn
on loopback, for what only a real socket does (a client that hangs up mid-request).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import uvicorn

from bon_server.app import create_app
from bon_server.config import Settings
from bon_server.generators.fake import ScriptedGenerator
from bon_server.metrics import Metrics

TEXTS = ("= 5\nThe answer is 5.", "= 6\nThe answer is 6.")
MESSAGES = [{"role": "user", "content": "What is 2 + 3?"}]
KEY = "sk-test-0123456789"


def app_with(generator=None, scorer=None, metrics=None, **settings):
    settings.setdefault("keepalive_interval_s", 0.02)
    return create_app(
        Settings(**settings),
        generator=generator or ScriptedGenerator(TEXTS),
        scorer=scorer,
        metrics=metrics,
    )


@contextlib.asynccontextmanager
async def running(app) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bon") as client:
            yield client


@contextlib.contextmanager
def served(app) -> Iterator[int]:
    """Real uvicorn running ``app`` (lifespan included) in a thread; yields its port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def scenario(fn: Callable):
    """Run an async test body to completion (no asyncio plugin needed)."""
    return asyncio.run(fn())


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def chat_body(**body):
    body.setdefault("messages", MESSAGES)
    return body


def openai_error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def sample(metrics: Metrics, name: str, labels: dict | None = None) -> float:
    return metrics.registry.get_sample_value(name, labels or {}) or 0.0
