"""Reliability and security (issue 6): keys, limits, admission, deadlines, draining, logs, faults.

The fast tests drive ``create_app`` with the scripted generator through httpx's
ASGI transport (several requests at once, in one event loop); the ``engine``
tests at the end use a real server subprocess with keys, a deadline and an
admission bound, and a second one that is sent SIGTERM mid-request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from conftest import ServerProcess

from bon_server.admission import WorkGate
from bon_server.app import _aclose, create_app, drain
from bon_server.config import Settings
from bon_server.errors import DeadlineExceededError, InvalidRequestError, RateLimitError
from bon_server.generators.fake import ConstantScorer, ScriptedGenerator
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


# ---------------------------------------------------------------------- API keys


def test_keys_guard_everything_but_health_and_metrics():
    metrics = Metrics()
    app = app_with(api_keys=(KEY, "sk-second"), metrics=metrics)

    async def run():
        async with running(app) as c:
            r = await c.post("/v1/chat/completions", json=chat_body())
            err = openai_error(r, 401)
            assert err["type"] == "authentication_error" and err["code"] == "invalid_api_key"
            assert r.headers["www-authenticate"] == "Bearer"
            assert r.headers["x-request-id"]
            wrong = {"Authorization": "Bearer sk-test-012345678"}  # one character short
            r = await c.post("/v1/chat/completions", json=chat_body(), headers=wrong)
            assert KEY not in openai_error(r, 401)["message"]
            for headers in ({"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}):
                openai_error(await c.get("/v1/models", headers=headers), 401)
            for key in (KEY, "sk-second"):
                auth = {"Authorization": f"Bearer {key}"}
                r = await c.post("/v1/chat/completions", json=chat_body(), headers=auth)
                assert r.status_code == 200, r.text
            assert (
                await c.get("/v1/models", headers={"authorization": f"bearer {KEY}"})
            ).is_success
            assert (await c.get("/health")).status_code == 200
            assert (await c.get("/metrics")).status_code == 200
            openai_error(await c.get("/openapi.json"), 401)

    scenario(run)
    assert sample(metrics, "bon_auth_failures_total") == 5


def test_metrics_can_require_a_key():
    app = app_with(api_keys=(KEY,), metrics_require_key=True)

    async def run():
        async with running(app) as c:
            openai_error(await c.get("/metrics"), 401)
            auth = {"Authorization": f"Bearer {KEY}"}
            assert (await c.get("/metrics", headers=auth)).status_code == 200
            assert (await c.get("/health")).status_code == 200

    scenario(run)


def test_no_keys_configured_means_open():
    async def run():
        async with running(app_with()) as c:
            assert (await c.post("/v1/chat/completions", json=chat_body())).status_code == 200

    scenario(run)


def test_api_keys_from_env_and_settings(monkeypatch):
    monkeypatch.setenv("BON_API_KEYS", f"{KEY}, sk-second ,")
    assert Settings().api_keys == (KEY, "sk-second")
    monkeypatch.setenv("BON_API_KEYS", json.dumps([KEY]))
    assert Settings().api_keys == (KEY,)
    monkeypatch.delenv("BON_API_KEYS")
    assert Settings(api_keys=["a,b", "c"]).api_keys == ("a", "b", "c")
    assert KEY not in repr(Settings(api_keys=[KEY]))
    with pytest.raises(ValueError, match="whitespace"):
        Settings(api_keys=["two words"])


def test_openapi_declares_the_bearer_scheme_and_no_422():
    doc = app_with(api_keys=(KEY,)).openapi()
    assert doc["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    assert chat["security"] == [{"bearer": []}]
    assert "security" not in doc["paths"]["/health"]["get"]
    assert "security" not in doc["paths"]["/metrics"]["get"]
    for item in doc["paths"].values():
        for operation in item.values():
            assert "422" not in operation["responses"]
    assert "HTTPValidationError" not in json.dumps(doc)
    assert "securitySchemes" not in app_with().openapi()["components"]


# ---------------------------------------------------------------------- limits


def test_body_over_the_limit_is_413_before_it_is_read():
    app = app_with(ScriptedGenerator(TEXTS, max_model_len=10_000), max_request_bytes=4096)
    big = chat_body(messages=[{"role": "user", "content": "x" * 5000}])

    async def chunked():
        payload = json.dumps(big).encode()
        for i in range(0, len(payload), 1000):
            yield payload[i : i + 1000]

    async def run():
        async with running(app) as c:
            err = openai_error(await c.post("/v1/chat/completions", json=big), 413)
            assert err["code"] == "payload_too_large" and "4096" in err["message"]
            r = await c.post("/v1/chat/completions", content=chunked())  # no Content-Length
            openai_error(r, 413)
            small = chat_body(messages=[{"role": "user", "content": "x" * 3000}])
            assert (await c.post("/v1/chat/completions", json=small)).status_code == 200

    scenario(run)


@pytest.mark.parametrize(
    "body, param",
    [
        (chat_body(messages=MESSAGES * 5), "messages"),
        (chat_body(messages=[{"role": "user", "content": "x" * 101}]), "messages.0.content"),
        (
            chat_body(
                messages=[
                    MESSAGES[0],
                    {"role": "user", "content": [{"type": "text", "text": "y" * 101}]},
                ]
            ),
            "messages.1.content",
        ),
        (chat_body(max_tokens=65), "max_tokens"),
        (chat_body(max_completion_tokens=65), "max_tokens"),
        (chat_body(stop=["a", "b", "c", "d", "e"]), "stop"),
        (chat_body(best_of=9), "best_of"),
        (chat_body(n=3, best_of=2), "best_of"),
        (chat_body(logit_bias={str(i): 1 for i in range(1025)}), "logit_bias"),
    ],
)
def test_chat_limits_are_400(body, param):
    gen = ScriptedGenerator(TEXTS)
    app = app_with(gen, max_messages=4, max_message_chars=100, max_tokens_limit=64, max_best_of=8)

    async def run():
        async with running(app) as c:
            for stream in (False, True):
                r = await c.post("/v1/chat/completions", json={**body, "stream": stream})
                assert openai_error(r, 400)["param"] == param

    scenario(run)
    assert gen.calls == []  # nothing reached the generator


@pytest.mark.parametrize(
    "prompt, extra",
    [
        (["a"] * 5, {}),
        ("x" * 101, {}),
        ([1] * 101, {}),
        ([[1, 2], [1] * 101], {}),
        ("ok", {"max_tokens": 65}),
    ],
)
def test_completions_limits_are_400(prompt, extra):
    gen = ScriptedGenerator(TEXTS)
    app = app_with(gen, max_messages=4, max_message_chars=100, max_tokens_limit=64)

    async def run():
        async with running(app) as c:
            r = await c.post("/v1/completions", json={"prompt": prompt, **extra})
            assert openai_error(r, 400)["param"] in ("prompt", "max_tokens")

    scenario(run)
    assert gen.calls == []


def test_a_request_larger_than_the_admission_bound_is_400():
    app = app_with(max_sequences_in_flight=8, max_best_of=8, default_best_of=4)

    async def run():
        async with running(app) as c:
            r = await c.post("/v1/completions", json={"prompt": ["a", "b", "c"], "best_of": 4})
            err = openai_error(r, 400)
            assert err["param"] == "best_of" and "12 sequences" in err["message"]
            r = await c.post("/v1/completions", json={"prompt": ["a", "b"], "best_of": 4})
            assert r.status_code == 200

    scenario(run)


def test_settings_refuse_an_admission_bound_below_max_best_of():
    with pytest.raises(ValueError, match="could never be admitted"):
        Settings(max_sequences_in_flight=16, max_best_of=64)
    assert Settings(max_sequences_in_flight=0, max_best_of=64).max_sequences_in_flight == 0


# ---------------------------------------------------------------------- admission


def test_full_server_answers_429_with_retry_after():
    metrics = Metrics()
    gen = ScriptedGenerator(TEXTS, delay_s=0.3)
    app = app_with(gen, metrics=metrics, max_sequences_in_flight=8, max_best_of=8)

    async def run():
        async with running(app) as c:
            first = asyncio.ensure_future(c.post("/v1/chat/completions", json=chat_body(best_of=8)))
            await wait_until(lambda: len(gen.calls) == 1)
            assert sample(metrics, "bon_sequences_in_flight") == 8
            for stream in (False, True):
                r = await c.post("/v1/chat/completions", json=chat_body(best_of=1, stream=stream))
                err = openai_error(r, 429)
                assert err["type"] == "rate_limit_exceeded" and err["code"] == "server_busy"
                assert int(r.headers["retry-after"]) >= 1
            assert (await first).status_code == 200
            r = await c.post("/v1/chat/completions", json=chat_body(best_of=8))
            assert r.status_code == 200

    scenario(run)
    assert len(gen.calls) == 2  # the refused requests never reached the generator
    assert sample(metrics, "bon_admission_rejected_total") == 2
    assert sample(metrics, "bon_sequences_in_flight") == 0
    assert sample(metrics, "bon_requests_total", {"endpoint": "chat", "status": "429"}) == 2


def test_admission_queue_waits_then_admits_and_records_the_wait():
    metrics = Metrics()
    gen = ScriptedGenerator(TEXTS, delay_s=0.2)
    app = app_with(
        gen, metrics=metrics, max_sequences_in_flight=8, max_best_of=8, admission_timeout=5
    )

    async def run():
        async with running(app) as c:
            posts = [
                asyncio.ensure_future(c.post("/v1/chat/completions", json=chat_body(best_of=8)))
                for _ in range(3)
            ]
            await wait_until(lambda: sample(metrics, "bon_admission_queue_length") == 2)
            statuses = [(await p).status_code for p in posts]
            assert statuses == [200, 200, 200]

    scenario(run)
    assert sample(metrics, "bon_admission_wait_seconds_count") == 3
    assert sample(metrics, "bon_admission_wait_seconds_sum") > 0.2 + 0.4 - 0.05
    assert sample(metrics, "bon_admission_queue_length") == 0
    assert sample(metrics, "bon_sequences_in_flight") == 0


def test_gate_is_first_in_first_out():
    async def run():
        gate = WorkGate(max_sequences=4, admission_timeout=5)
        held = await gate.admit(3)
        big = asyncio.ensure_future(gate.admit(2))
        await asyncio.sleep(0.01)
        small = asyncio.ensure_future(gate.admit(1))  # would fit now, but queues behind `big`
        await asyncio.sleep(0.01)
        assert not big.done() and not small.done()
        held.release()
        held.release()  # idempotent
        await asyncio.sleep(0.01)
        assert big.done() and small.done() and gate.in_use == 3
        big.result().release()
        small.result().release()
        assert gate.in_use == 0

    scenario(run)


def test_gate_cancelled_or_timed_out_waiters_leave_the_queue():
    async def run():
        gate = WorkGate(max_sequences=4, admission_timeout=0.05)
        held = await gate.admit(4)
        with pytest.raises(RateLimitError) as info:
            await gate.admit(1)
        assert info.value.headers["Retry-After"] == "1"
        gate.admission_timeout = 5
        blocked = asyncio.ensure_future(gate.admit(4))
        await asyncio.sleep(0.01)
        behind = asyncio.ensure_future(gate.admit(1))
        await asyncio.sleep(0.01)
        blocked.cancel()  # its client left: the one behind it moves up
        await asyncio.sleep(0.01)
        assert not behind.done()
        held.release()
        ticket = await asyncio.wait_for(behind, 1)
        assert gate.in_use == 1 and not gate._waiters
        ticket.release()
        assert gate.in_use == 0
        with pytest.raises(InvalidRequestError):
            await gate.admit(5)

    scenario(run)


def test_gate_grant_and_cancel_in_the_same_tick_leaks_nothing():
    """Found by the soak: a queued client that leaves just as it is granted. (asyncio.wait_for
    on 3.11 returned the grant to a caller that had been cancelled.)"""

    async def run():
        gate = WorkGate(max_sequences=4, admission_timeout=5)
        held = await gate.admit(4)
        waiter = asyncio.ensure_future(gate.admit(4))
        await asyncio.sleep(0.01)
        held.release()  # grants the waiter...
        waiter.cancel()  # ...whose client leaves before it runs again
        [outcome] = await asyncio.gather(waiter, return_exceptions=True)
        assert isinstance(outcome, asyncio.CancelledError)
        assert gate.in_use == 0 and not gate._waiters

    scenario(run)


def test_queued_clients_that_leave_release_their_place():
    metrics = Metrics()
    gen = ScriptedGenerator(TEXTS, delay_s=0.05)
    app = app_with(
        gen, metrics=metrics, max_sequences_in_flight=8, max_best_of=8, admission_timeout=5
    )

    async def run():
        async with running(app) as c:
            rng = random.Random(0)
            posts = []
            for _ in range(60):
                posts.append(
                    asyncio.ensure_future(
                        c.post("/v1/chat/completions", json=chat_body(best_of=rng.choice([2, 8])))
                    )
                )
                await asyncio.sleep(rng.uniform(0, 0.01))
                if rng.random() < 0.4:
                    posts[rng.randrange(len(posts))].cancel()
            await asyncio.gather(*posts, return_exceptions=True)
            await wait_until(lambda: sample(metrics, "bon_requests_in_flight") == 0)

    scenario(run)
    assert sample(metrics, "bon_sequences_in_flight") == 0
    assert sample(metrics, "bon_admission_queue_length") == 0


def test_gate_deadline_cancels_the_work_and_releases():
    async def run():
        gate = WorkGate(max_sequences=4, request_timeout=0.05)
        cancelled = asyncio.Event()

        async def slow():
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        task = gate.start(slow(), await gate.admit(2))
        with pytest.raises(DeadlineExceededError):
            await task
        assert cancelled.is_set() and gate.in_use == 0 and not gate.tasks

    scenario(run)


# ---------------------------------------------------------------------- deadlines


def test_deadline_is_504_and_aborts_the_generation():
    metrics = Metrics()
    gen = ScriptedGenerator(TEXTS, delay_s=5)
    app = app_with(gen, metrics=metrics, request_timeout=0.1)

    async def run():
        async with running(app) as c:
            err = openai_error(await c.post("/v1/chat/completions", json=chat_body()), 504)
            assert err["type"] == "timeout" and err["code"] == "request_timeout"
            r = await c.post("/v1/completions", json={"prompt": ["a", "b"], "stream": True})
            assert r.status_code == 200
            events = [e for e in r.text.split("\n\n") if e.startswith("data: ")]
            assert events[-1] == "data: [DONE]" and len(events) == 2
            assert json.loads(events[0][6:])["error"]["type"] == "timeout"

    scenario(run)
    assert gen.cancelled == 3  # one chat, two completions prompts: every engine call aborted
    assert sample(metrics, "bon_request_timeouts_total") == 2
    assert sample(metrics, "bon_requests_in_flight") == 0
    assert sample(metrics, "bon_sequences_in_flight") == 0


def test_deadline_covers_a_hanging_verifier():
    class HangingScorer(ConstantScorer):
        async def score(self, prompt, candidates, aggregation=None):
            await asyncio.sleep(10)

    app = app_with(scorer=HangingScorer(), request_timeout=0.1)

    async def run():
        async with running(app) as c:
            openai_error(await c.post("/v1/chat/completions", json=chat_body()), 504)
            assert (await c.get("/health")).status_code == 200

    scenario(run)


# ---------------------------------------------------------------------- faults


def test_failing_verifier_is_503_and_the_server_stays_healthy():
    metrics = Metrics()
    app = app_with(
        scorer=ConstantScorer(fail_with=RuntimeError("CUDA error: device-side assert")),
        metrics=metrics,
    )

    async def run():
        async with running(app) as c:
            results = await asyncio.gather(
                *(
                    c.post("/v1/chat/completions", json=chat_body(stream=i % 2 == 1))
                    for i in range(8)
                )
            )
            for r in results[::2]:
                err = openai_error(r, 503)
                assert err["type"] == "service_unavailable"
            for r in results[1::2]:
                error = json.loads(r.text.split("\n\n")[-3][6:])["error"]
                assert error["type"] == "service_unavailable"
            assert (await c.get("/health")).json() == {"status": "ok"}
            r = await c.post("/v1/chat/completions", json=chat_body(selector="majority"))
            assert r.status_code == 200

    scenario(run)
    assert sample(metrics, "bon_requests_in_flight") == 0
    assert sample(metrics, "bon_sequences_in_flight") == 0
    assert sample(metrics, "bon_requests_total", {"endpoint": "chat", "status": "503"}) == 4


# ---------------------------------------------------------------------- draining


def test_draining_refuses_new_work_and_health_is_503():
    app = app_with()

    async def run():
        async with running(app) as c:
            app.state.draining = True
            r = await c.get("/health")
            assert r.status_code == 503 and r.json() == {"status": "draining"}
            r = await c.post("/v1/chat/completions", json=chat_body())
            assert openai_error(r, 503)["code"] == "draining"
            assert r.headers["connection"] == "close"
            assert (await c.get("/v1/models")).status_code == 200

    scenario(run)


def test_drain_lets_short_work_finish_and_aborts_the_rest():
    gen = ScriptedGenerator(TEXTS, delay_s=0.3)
    slow = ScriptedGenerator(TEXTS, delay_s=30)
    metrics = Metrics()
    app = app_with(gen, metrics=metrics)

    async def run():
        async with running(app) as c:
            short = asyncio.ensure_future(c.post("/v1/chat/completions", json=chat_body()))
            await wait_until(lambda: len(gen.calls) == 1)
            app.state.pipeline.generator = slow
            long = asyncio.ensure_future(c.post("/v1/chat/completions", json=chat_body()))
            stream = asyncio.ensure_future(
                c.post("/v1/chat/completions", json=chat_body(stream=True))
            )
            await wait_until(lambda: len(slow.calls) == 2)
            start = time.monotonic()
            await drain(app, grace_s=1.0)
            assert time.monotonic() - start < 3
            assert (await short).status_code == 200
            assert openai_error(await long, 503)["code"] == "draining"
            r = await stream
            assert '"code":"draining"' in r.text and r.text.endswith("data: [DONE]\n\n")

    scenario(run)
    assert slow.cancelled == 2
    assert sample(metrics, "bon_requests_in_flight") == 0
    assert sample(metrics, "bon_sequences_in_flight") == 0


def test_lifespan_shutdown_aborts_what_is_left_and_closes_backends():
    gen = ScriptedGenerator(TEXTS, delay_s=30)
    app = app_with(gen)

    async def run():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bon") as c:
            async with app.router.lifespan_context(app):
                pending = asyncio.ensure_future(c.post("/v1/chat/completions", json=chat_body()))
                await wait_until(lambda: len(gen.calls) == 1)
            assert gen.cancelled == 1
            assert app.state.draining
            openai_error(await pending, 503)

    scenario(run)


def test_aclose_is_awaited_when_a_backend_has_one():
    closed = []

    class Closable:
        async def aclose(self):
            closed.append(self)

    class Broken:
        async def aclose(self):
            raise RuntimeError("already closed")

    class SyncClose:
        def aclose(self):
            raise AssertionError("not a coroutine: must not be called")

    a, b = Closable(), Closable()
    asyncio.run(_aclose(a, None, Broken(), SyncClose(), b))
    assert closed == [a, b]


# ---------------------------------------------------------------------- request ids, logs


def access_lines(caplog) -> list[dict]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "bon.access"]


def test_request_id_is_accepted_echoed_or_minted(caplog):
    caplog.set_level(logging.INFO, logger="bon.access")

    async def run():
        async with running(app_with()) as c:
            r = await c.post(
                "/v1/chat/completions", json=chat_body(), headers={"X-Request-Id": "abc-123.x:y_z"}
            )
            assert r.headers["x-request-id"] == "abc-123.x:y_z"
            for bad in ("has space", "x" * 129, 'quote"', "new\\nline"):
                r = await c.post(
                    "/v1/chat/completions", json=chat_body(), headers={"X-Request-Id": bad}
                )
                assert len(r.headers["x-request-id"]) == 32 and r.headers["x-request-id"] != bad
            r = await c.get("/v1/nope")
            assert len(r.headers["x-request-id"]) == 32

    scenario(run)
    ids = [line["id"] for line in access_lines(caplog)]
    assert ids[0] == "abc-123.x:y_z" and len(ids) == 6


def test_one_access_line_per_request_without_content(caplog):
    caplog.set_level(logging.INFO, logger="bon.access")
    app = app_with(scorer=ConstantScorer((0.1, 0.9)), request_timeout=5)

    async def run():
        async with running(app) as c:
            r = await c.post(
                "/v1/chat/completions",
                json=chat_body(n=2, best_of=4, selector="verifier"),
                headers={"X-Request-Id": "req-1"},
            )
            assert r.status_code == 200
            await c.post("/v1/chat/completions", json=chat_body(temperature=9))
            await c.post("/v1/completions", json={"prompt": "secret prompt", "stream": True})
            await c.get("/health")  # DEBUG, not INFO

    scenario(run)
    lines = access_lines(caplog)
    assert [line["status"] for line in lines] == [200, 400, 200]
    first = lines[0]
    assert first["id"] == "req-1" and first["method"] == "POST"
    assert first["path"] == "/v1/chat/completions"
    assert first["best_of"] == 4 and first["n"] == 2 and first["selector"] == "verifier"
    assert first["prompt_tokens"] == len(MESSAGES[0]["content"]) + 2
    assert first["completion_tokens"] == 2 * (len(TEXTS[0]) + len(TEXTS[1]))
    assert first["latency_ms"] >= 0 and first["disconnected"] is False
    assert first["timed_out"] is False
    assert lines[2]["stream"] is True and lines[2]["completion_tokens"] > 0
    text = "\n".join(r.getMessage() for r in caplog.records)
    for secret in ("What is 2 + 3?", "secret prompt", "The answer is"):
        assert secret not in text


def test_log_content_adds_prompt_and_completion(caplog):
    caplog.set_level(logging.INFO, logger="bon.access")

    async def run():
        async with running(app_with(log_content=True)) as c:
            await c.post("/v1/chat/completions", json=chat_body(best_of=2))

    scenario(run)
    [line] = access_lines(caplog)
    assert line["prompt"] == MESSAGES
    assert line["completion"] == [TEXTS[0]]


def test_timeouts_and_disconnects_are_flagged_in_the_log(caplog):
    caplog.set_level(logging.INFO, logger="bon.access")
    app = app_with(ScriptedGenerator(TEXTS, delay_s=5), request_timeout=0.05)

    async def run():
        async with running(app) as c:
            await c.post("/v1/chat/completions", json=chat_body())

    scenario(run)
    [line] = access_lines(caplog)
    assert line["status"] == 504 and line["timed_out"] is True and line["error"] == "timeout"


# ---------------------------------------------------------------------- the real engine

ENGINE_KEY = "sk-engine-test"
LONG = {"best_of": 64, "max_tokens": 460, "ignore_eos": True}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory) -> ServerProcess:
    log_path = tmp_path_factory.mktemp("logs") / "guarded.log"
    proc = ServerProcess(
        [
            "--api-key",
            ENGINE_KEY,
            "--api-key",
            "sk-other",
            "--request-timeout",
            "1.5",
            "--max-sequences-in-flight",
            "64",
        ],
        log_path,
    )
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


def engine_chat(base_url: str, key: str | None = ENGINE_KEY, **body) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {
        "model": "arith-policy",
        "messages": [{"role": "user", "content": "What is 2 + 3?"}],
        **body,
    }
    return httpx.post(f"{base_url}/v1/chat/completions", json=body, headers=headers, timeout=60)


def wait_metric(server: ServerProcess, name: str, predicate, timeout_s: float = 60) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate(server.metric(name)):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.engine
def test_engine_keys_with_the_openai_sdk(guarded):
    import openai

    with openai.OpenAI(base_url=f"{guarded.base_url}/v1", api_key="sk-wrong", max_retries=0) as c:
        with pytest.raises(openai.AuthenticationError) as info:
            c.models.list()
        assert info.value.status_code == 401 and info.value.code == "invalid_api_key"
    openai_error(engine_chat(guarded.base_url, key=None), 401)
    for key in (ENGINE_KEY, "sk-other"):
        with openai.OpenAI(base_url=f"{guarded.base_url}/v1", api_key=key, max_retries=0) as c:
            r = c.chat.completions.create(
                model="arith-policy", messages=MESSAGES, max_tokens=32, extra_body={"best_of": 2}
            )
            assert r.choices[0].message.content
    assert httpx.get(f"{guarded.base_url}/health").status_code == 200


@pytest.mark.engine
@pytest.mark.parametrize("stream", [False, True])
def test_engine_deadline_aborts_every_candidate(guarded, stream):
    before = guarded.metric("bon_request_timeouts_total")
    r = engine_chat(guarded.base_url, stream=stream, **LONG)
    if stream:
        events = [e for e in r.text.split("\n\n") if e.startswith("data: ")]
        assert r.status_code == 200 and events[-1] == "data: [DONE]"
        assert json.loads(events[0][6:])["error"]["code"] == "request_timeout"
    else:
        assert openai_error(r, 504)["code"] == "request_timeout"
    assert guarded.metric("bon_request_timeouts_total") == before + 1
    assert wait_metric(guarded, "bon_engine_unfinished_requests", lambda v: v == 0)
    assert guarded.metric("bon_requests_in_flight") == 0
    assert guarded.metric("bon_sequences_in_flight") == 0


@pytest.mark.engine
def test_engine_admission_429_while_full(guarded):
    body = json.dumps({"model": "arith-policy", "messages": MESSAGES, **LONG}).encode()
    sock = socket.create_connection(("127.0.0.1", guarded.port))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer "
        + ENGINE_KEY.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body
    )
    try:
        assert wait_metric(guarded, "bon_sequences_in_flight", lambda v: v == 64)
        r = engine_chat(guarded.base_url, best_of=1, max_tokens=8)
        assert openai_error(r, 429)["code"] == "server_busy"
        assert int(r.headers["retry-after"]) >= 1
    finally:
        sock.close()
    assert wait_metric(guarded, "bon_sequences_in_flight", lambda v: v == 0)
    assert wait_metric(guarded, "bon_engine_unfinished_requests", lambda v: v == 0)
    assert engine_chat(guarded.base_url, best_of=4, max_tokens=16).status_code == 200


@pytest.mark.engine
def test_engine_access_log_has_the_request_id_and_no_text(guarded):
    r = engine_chat(guarded.base_url, best_of=4, max_tokens=32, seed=1)
    assert r.status_code == 200
    request_id = "engine-log-test-1"
    r = httpx.post(
        f"{guarded.base_url}/v1/chat/completions",
        json={"messages": MESSAGES, "best_of": 4, "max_tokens": 32},
        headers={"Authorization": f"Bearer {ENGINE_KEY}", "X-Request-Id": request_id},
        timeout=60,
    )
    assert r.headers["x-request-id"] == request_id
    answer = r.json()["choices"][0]["message"]["content"]
    time.sleep(0.2)
    log = guarded.log_path.read_text()
    [line] = [json.loads(x) for x in log.splitlines() if f'"id":"{request_id}"' in x]
    assert line["status"] == 200 and line["best_of"] == 4
    assert line["completion_tokens"] == r.json()["usage"]["completion_tokens"]
    assert "What is 2 + 3?" not in log and answer.strip() not in log


@pytest.mark.engine
def test_sigterm_finishes_short_work_and_aborts_long_work(tmp_path):
    """SIGTERM with --shutdown-timeout 3: a request that ends within it completes; two that
    cannot get a 503 (one streamed: an error event then [DONE]); the process exits promptly.
    Fewer sequences than the engine schedules at once (128 on CPU), so none waits in vLLM."""
    proc = ServerProcess(["--shutdown-timeout", "3"], tmp_path / "sigterm.log")
    try:
        proc.wait_ready()
        url = f"{proc.base_url}/v1/chat/completions"
        results: dict[str, httpx.Response] = {}

        def post(name: str, **body) -> None:
            body = {"messages": MESSAGES, **body}
            results[name] = httpx.post(url, json=body, timeout=120)

        threads = [
            threading.Thread(target=post, args=("long",), kwargs=LONG),
            threading.Thread(
                target=post, args=("stream",), kwargs={**LONG, "best_of": 32, "stream": True}
            ),
        ]
        for t in threads:
            t.start()
        assert wait_metric(proc, "bon_engine_unfinished_requests", lambda v: v == 96)
        short = threading.Thread(
            target=post, args=("short",), kwargs={"best_of": 4, "max_tokens": 24}
        )
        short.start()
        assert wait_metric(proc, "bon_engine_unfinished_requests", lambda v: v == 100)
        start = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        for t in [*threads, short]:
            t.join(timeout=60)
        # uvicorn re-raises the signal once it has shut down cleanly
        assert proc.proc.wait(timeout=60) in (0, -signal.SIGTERM)
        took = time.monotonic() - start
        assert results["short"].status_code == 200
        assert openai_error(results["long"], 503)["code"] == "draining"
        stream = results["stream"].text
        assert '"code":"draining"' in stream and stream.endswith("data: [DONE]\n\n")
        assert took < 3 + 20, took  # the grace period, then the engine's own shutdown
        log = proc.tail(200)
        assert "aborting 2 request(s) past the shutdown timeout" in log
    finally:
        proc.stop()
