"""Reliability (issue 6): admission, deadlines, faults, draining, request ids and the access log.

Through the scripted app over httpx's ASGI transport (``asgi_app.py``); the same
behaviours on the real engine are in ``test_reliability_engine.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
import time
import types

import httpx
import pytest
from asgi_app import (
    MESSAGES,
    TEXTS,
    app_with,
    chat_body,
    openai_error,
    running,
    sample,
    scenario,
    served,
    wait_until,
)
from conftest import wait_for

from bon_server.admission import WorkGate
from bon_server.app import _aclose, drain
from bon_server.errors import (
    DeadlineExceededError,
    InvalidRequestError,
    RateLimitError,
    ServiceUnavailableError,
)
from bon_server.generators.fake import ConstantScorer, ScriptedGenerator
from bon_server.logs import accept_request_id
from bon_server.metrics import Metrics

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


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_hangs_up_cancels_its_generation_and_is_logged(caplog, stream):
    """Real uvicorn, a raw socket closed mid-generation: the generation (30 s long) is
    cancelled within seconds, and the access line says ``"disconnected": true``."""
    caplog.set_level(logging.INFO, logger="bon.access")
    metrics = Metrics()
    gen = ScriptedGenerator(TEXTS, delay_s=30)
    body = json.dumps(chat_body(best_of=4, stream=stream)).encode()

    def logged() -> list[dict]:
        return [line for line in access_lines(caplog) if line["id"] == "hangs-up"]

    with served(app_with(gen, metrics=metrics)) as port:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nX-Request-Id: hangs-up\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
            + body
        )
        try:
            assert wait_for(lambda: len(gen.calls) == 1, 5)
            assert sample(metrics, "bon_sequences_in_flight") == 4
        finally:
            sock.close()
        assert wait_for(lambda: gen.cancelled == 1, 5)
        assert wait_for(lambda: len(logged()) == 1, 5)
        assert wait_for(lambda: sample(metrics, "bon_requests_in_flight") == 0, 5)
    [line] = logged()
    assert line["disconnected"] is True and line["timed_out"] is False
    assert line["stream"] is stream and line["best_of"] == 4
    assert line["status"] == (200 if stream else 499)  # a stream's 200 had gone out already
    assert line["completion_tokens"] is None
    assert sample(metrics, "bon_client_disconnects_total") == 1
    assert sample(metrics, "bon_sequences_in_flight") == 0


def test_health_is_503_while_a_remote_verifier_does_not_answer():
    class RemoteScorer(ConstantScorer):
        up = True

        async def check_health(self):
            if not self.up:
                raise ConnectionError("verifier at http://v:8000 refused the connection")

    scorer = RemoteScorer()

    async def body():
        async with running(app_with(scorer=scorer)) as c:
            assert (await c.get("/health")).status_code == 200
            scorer.up = False
            r = await c.get("/health")
            assert r.status_code == 503
            assert r.json()["detail"] == "the verifier backend is not answering"
            assert "v:8000" not in r.text  # the address stays in the log
            scorer.up = True
            assert (await c.get("/health")).status_code == 200

    scenario(body)


# ---------------------------------------------------------------------- review regressions


class _PerPromptGenerator(ScriptedGenerator):
    """Prompt "bad" fails with ``fail_with`` after a moment; every other prompt hangs."""

    def __init__(self, fail_with: Exception) -> None:
        super().__init__(TEXTS)
        self.bad_error = fail_with

    async def generate(self, request):
        self.calls.append(request)
        try:
            if request.prompt.text == "bad":
                await asyncio.sleep(0.05)
                raise self.bad_error
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        raise AssertionError("unreachable")


@pytest.mark.parametrize(
    ("error", "status"),
    [(InvalidRequestError("bad prompt", param="prompt"), 400), (RuntimeError("boom"), 500)],
)
def test_one_failing_prompt_cancels_the_other_prompts(error, status):
    metrics = Metrics()
    gen = _PerPromptGenerator(error)
    app = app_with(gen, metrics=metrics, max_best_of=8)

    async def run():
        async with running(app) as c:
            r = await c.post("/v1/completions", json={"prompt": ["bad", "ok"], "best_of": 8})
            err = openai_error(r, status)
            if status == 400:  # the BonError keeps its status and message through the group
                assert err["message"] == "bad prompt" and err["param"] == "prompt"
            assert len(gen.calls) == 2
            assert gen.cancelled == 1  # the hanging prompt was aborted, not left running
            assert not app.state.gate.tasks and app.state.gate.in_use == 0

    scenario(run)
    assert sample(metrics, "bon_sequences_in_flight") == 0


def test_drain_refuses_requests_queued_for_admission():
    metrics = Metrics()
    gen = ScriptedGenerator(TEXTS, delay_s=30)
    app = app_with(
        gen, metrics=metrics, max_sequences_in_flight=8, max_best_of=8, admission_timeout=10
    )

    async def run():
        async with running(app) as c:
            a = asyncio.ensure_future(c.post("/v1/chat/completions", json=chat_body(best_of=8)))
            await wait_until(lambda: len(gen.calls) == 1)
            b = asyncio.ensure_future(c.post("/v1/chat/completions", json=chat_body(best_of=8)))
            await wait_until(lambda: sample(metrics, "bon_admission_queue_length") == 1)
            await drain(app, grace_s=0.2)
            assert openai_error(await a, 503)["code"] == "draining"
            rb = await b
            assert openai_error(rb, 503)["code"] == "draining"
            assert rb.headers["retry-after"] == "1"
            await asyncio.sleep(0.05)
            assert len(gen.calls) == 1  # B never started engine work

    scenario(run)
    assert sample(metrics, "bon_sequences_in_flight") == 0
    assert sample(metrics, "bon_admission_queue_length") == 0


def test_closed_gate_fails_waiters_and_refuses_new_admissions():
    async def run():
        gate = WorkGate(max_sequences=2, admission_timeout=10)
        held = gate.try_admit(2)
        waiter = asyncio.ensure_future(gate.admit(1))
        await wait_until(lambda: len(gate._waiters) == 1)
        gate.close()
        with pytest.raises(ServiceUnavailableError) as info:
            await waiter
        assert info.value.code == "draining" and info.value.headers == {"Retry-After": "1"}
        with pytest.raises(ServiceUnavailableError):
            gate.try_admit(1)
        held.release()
        assert gate.in_use == 0 and not gate._waiters

    scenario(run)


def test_drain_waits_for_admissions_granted_but_not_started():
    async def run():
        gate = WorkGate(max_sequences=4)
        app = types.SimpleNamespace(state=types.SimpleNamespace(gate=gate, draining=False))
        ticket = gate.try_admit(1)  # granted; its task not started yet
        draining = asyncio.ensure_future(drain(app, grace_s=5))
        await asyncio.sleep(0.15)
        assert not draining.done()  # gate.tasks is empty, yet drain must not return
        ran = []

        async def work():
            ran.append(1)

        await gate.start(work(), ticket)
        await asyncio.wait_for(draining, 2)
        assert ran == [1] and gate.in_use == 0

    scenario(run)


def test_work_started_after_abort_is_refused():
    async def run():
        gate = WorkGate(max_sequences=4)
        ticket = gate.try_admit(1)
        gate.close()
        await gate.abort_all()

        async def work():
            raise AssertionError("must not run")

        with pytest.raises(ServiceUnavailableError):
            await gate.start(work(), ticket)
        assert gate.in_use == 0

    scenario(run)


def test_unhandled_error_500_carries_the_request_id(caplog):
    caplog.set_level(logging.INFO, logger="bon.access")
    gen = ScriptedGenerator(TEXTS, fail_with=RuntimeError("engine exploded"))

    async def run():
        async with running(app_with(gen)) as c:
            r = await c.post(
                "/v1/chat/completions", json=chat_body(), headers={"X-Request-Id": "abc123"}
            )
            err = openai_error(r, 500)
            assert err == {
                "message": "internal server error",
                "type": "internal_error",
                "param": None,
                "code": None,
            }
            assert r.headers["x-request-id"] == "abc123"

    scenario(run)
    lines = access_lines(caplog)
    assert [(x["id"], x["status"]) for x in lines] == [("abc123", 500)]
    assert any(r.name == "bon_server.logs" and r.exc_info for r in caplog.records)


def test_request_id_with_a_trailing_newline_is_replaced():
    assert accept_request_id("abc") == "abc"
    for bad in ("abc\n", "abc\r\n", "\nabc", ""):
        minted = accept_request_id(bad)
        assert minted != bad and len(minted) == 32
