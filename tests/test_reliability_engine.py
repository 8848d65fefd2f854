"""Reliability on the real engine: keys with the openai SDK, deadlines and admission that
abort every candidate in vLLM, the access log, and a SIGTERM drain of a live process."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time

import httpx
import pytest
from asgi_app import MESSAGES, openai_error
from conftest import LONG_REQUEST, ServerProcess, assert_aborted, started, wait_for

pytestmark = pytest.mark.engine


ENGINE_KEY = "sk-engine-test"
LONG = LONG_REQUEST


@pytest.fixture(scope="module")
def guarded(tmp_path_factory) -> ServerProcess:
    log_path = tmp_path_factory.mktemp("logs") / "guarded.log"
    args = ["--api-key", ENGINE_KEY, "--api-key", "sk-other", "--request-timeout", "1.5",
            "--max-sequences-in-flight", "64"]
    with started(ServerProcess(args, log_path)) as proc:
        yield proc


def engine_chat(base_url: str, key: str | None = ENGINE_KEY, **body) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {
        "model": "arith-policy",
        "messages": [{"role": "user", "content": "What is 2 + 3?"}],
        **body,
    }
    return httpx.post(f"{base_url}/v1/chat/completions", json=body, headers=headers, timeout=60)


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


@pytest.mark.parametrize("stream", [False, True])
def test_engine_deadline_aborts_every_candidate(guarded, stream):
    """The 1.5 s deadline passes long before the request could end: the engine stops at once."""
    before = guarded.metric("bon_request_timeouts_total")
    tokens = guarded.metric("vllm:generation_tokens_total")
    r = engine_chat(guarded.base_url, stream=stream, **LONG)
    if stream:
        events = [e for e in r.text.split("\n\n") if e.startswith("data: ")]
        assert r.status_code == 200 and events[-1] == "data: [DONE]"
        assert json.loads(events[0][6:])["error"]["code"] == "request_timeout"
    else:
        assert openai_error(r, 504)["code"] == "request_timeout"
    assert guarded.metric("bon_request_timeouts_total") == before + 1
    assert_aborted(
        lambda: guarded.metric("vllm:generation_tokens_total"),
        lambda: guarded.metric("bon_engine_unfinished_requests"),
        tokens,
    )
    assert guarded.metric("bon_requests_in_flight") == 0
    assert guarded.metric("bon_sequences_in_flight") == 0


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
        assert wait_for(lambda: guarded.metric("bon_sequences_in_flight") == 64)
        r = engine_chat(guarded.base_url, best_of=1, max_tokens=8)
        assert openai_error(r, 429)["code"] == "server_busy"
        assert int(r.headers["retry-after"]) >= 1
    finally:
        sock.close()
    assert wait_for(lambda: guarded.metric("bon_sequences_in_flight") == 0)
    assert wait_for(lambda: guarded.metric("bon_engine_unfinished_requests") == 0)
    assert engine_chat(guarded.base_url, best_of=4, max_tokens=16).status_code == 200


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


def _read_response(sock: socket.socket) -> tuple[int, dict]:
    """Status and JSON body of the one HTTP/1.1 response on ``sock`` (closed after it)."""
    sock.settimeout(60)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_sigterm_finishes_short_work_and_aborts_long_work(tmp_path):
    """SIGTERM with --shutdown-timeout 3: a request that ends within it completes; two that
    cannot get a 503 (one streamed: an error event then [DONE]); the process exits promptly.
    A request queued for admission gets its 503 at once, not when the grace ends; and a
    request whose headers came before the signal, but its body after, meets a closed gate.
    Fewer sequences than the engine schedules at once (128 on CPU), so none waits in vLLM."""
    args = ["--shutdown-timeout", "3", "--max-sequences-in-flight", "100",
            "--admission-timeout", "60"]
    with started(ServerProcess(args, tmp_path / "sigterm.log")) as proc:
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
        assert wait_for(lambda: proc.metric("bon_engine_unfinished_requests") == 96)
        # an open connection: its request's headers arrive now, its body after the signal
        body = json.dumps({"messages": MESSAGES, "best_of": 1, "max_tokens": 4}).encode()
        pending = socket.create_connection(("127.0.0.1", proc.port))
        try:
            pending.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: "
                b"application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
            )
            assert wait_for(lambda: proc.metric("bon_requests_in_flight") == 3)
            short = threading.Thread(
                # 40 tokens whatever it writes (about 0.7 s beside the long work here): still
                # running at the signal (24 without ignore_eos once ended first, in CI), and
                # done within the grace
                target=post, args=("short",),
                kwargs={"best_of": 4, "max_tokens": 40, "ignore_eos": True},
            )
            short.start()
            assert wait_for(lambda: proc.metric("bon_engine_unfinished_requests") == 100)
            # the admission bound (100 sequences) is reached: this one waits in the queue
            queued = threading.Thread(
                target=post, args=("queued",), kwargs={"best_of": 8, "max_tokens": 8}
            )
            queued.start()
            assert wait_for(lambda: proc.metric("bon_admission_queue_length") == 1)
            assert short.is_alive()  # in flight when the signal comes
            start = time.monotonic()
            proc.proc.send_signal(signal.SIGTERM)
            queued.join(timeout=60)
            assert "long" not in results, "the queued request waited for the grace period"
            assert openai_error(results["queued"], 503)["code"] == "draining"
            pending.sendall(body)  # the gate is closed now (the queued request was refused)
            status, answer = _read_response(pending)
        finally:
            pending.close()
        assert status == 503 and answer["error"]["code"] == "draining"
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
