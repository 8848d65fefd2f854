"""Code checked by its tests (the ``tests`` request field): scripted candidates through the
HTTP surface, in-process and proxied, their programs run in the real sandbox."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from bon_server.app import create_app
from bon_server.config import Settings
from bon_server.generators.fake import ScriptedGenerator
from bon_server.generators.upstream import UpstreamGenerator
from bon_server.upstream_client import RemoteServer

MESSAGES = [{"role": "user", "content": "Write add(a, b) in Python."}]
TESTS = ["assert add(2, 3) == 5", "assert add(3, 0) == 3", "assert add(10, 5) == 15"]
RIGHT = "Here it is:\n```python\ndef add(a, b):\n    return a + b\n```"
WRONG = "```python\ndef add(a, b):\n    return a - b\n```"  # passes one test of three
FOREVER = "```python\ndef add(a, b):\n    while True:\n        pass\n```"
# two identical wrong programs would win a vote over the one right one
CANDIDATES = (WRONG, FOREVER, RIGHT, WRONG)


def serve(texts, **settings) -> TestClient:
    settings.setdefault("keepalive_interval_s", 5.0)
    settings.setdefault("model", "bon_server/embedded/arith-policy")
    return TestClient(create_app(Settings(**settings), generator=ScriptedGenerator(texts)))


def chat(client, **body):
    body.setdefault("messages", MESSAGES)
    return client.post("/v1/chat/completions", json=body)


def sandbox_leftovers() -> tuple[list[str], list[int]]:
    """Sandbox working directories still on disk, and processes still running in one."""
    dirs = [p.name for p in Path(tempfile.gettempdir()).glob("bon-sandbox-*")]
    procs = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if b"TMPDIR=" in environ and b"bon-sandbox-" in environ:
            procs.append(int(pid))
    return dirs, procs


def test_the_program_that_passes_is_chosen_over_a_vote_and_a_hang():
    with serve(CANDIDATES, request_timeout=20.0) as client:
        t0 = time.monotonic()
        r = chat(client, best_of=4, selector="majority", tests=TESTS, tests_timeout_s=2,
                 return_candidates=True)
        took = time.monotonic() - t0
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["choices"][0]["message"]["content"] == RIGHT
        assert took < 20.0  # within the request's deadline: the hang was cut at its 2 s
        cands = out["bon"]["candidates"]
        assert cands[2]["tests"] == {"passed": 3, "failed": 0, "errored": 0,
                                     "first_error": None, "timed_out": False}
        assert cands[0]["tests"]["passed"] == 1 and cands[0]["tests"]["failed"] == 2
        assert cands[0]["tests"]["first_error"] == "AssertionError"
        assert cands[1]["tests"]["passed"] == 0 and cands[1]["tests"]["timed_out"]
        assert out["bon"]["scores"] == pytest.approx([1 / 3, 0.0, 1.0, 1 / 3])
        # without tests, the two identical wrong programs win the vote
        r = chat(client, best_of=4, selector="majority")
        assert r.json()["choices"][0]["message"]["content"] == WRONG
    assert sandbox_leftovers() == ([], [])


def test_behind_real_uvicorn_on_its_default_loop():
    """uvicorn runs on uvloop where it is installed (``make serve`` does): the sandbox once
    never got its payload there, while every in-process test passed."""
    from asgi_app import app_with, served

    with served(app_with(ScriptedGenerator(CANDIDATES), model="bon_server/embedded/arith-policy",
                         request_timeout=20.0)) as port:
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=30,
                       json={"messages": MESSAGES, "best_of": 4, "tests": TESTS,
                             "tests_timeout_s": 2, "return_candidates": True})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == RIGHT
    assert r.json()["bon"]["scores"] == pytest.approx([1 / 3, 0.0, 1.0, 1 / 3])
    assert sandbox_leftovers() == ([], [])


def test_one_test_script_works_too():
    script = "assert add(1, 1) == 2\nassert add(0, 0) == 0\n"
    with serve((WRONG, RIGHT)) as client:
        r = chat(client, best_of=2, tests=script, return_candidates=True)
    out = r.json()
    assert out["choices"][0]["message"]["content"] == RIGHT
    assert out["bon"]["candidates"][1]["tests"]["passed"] == 1  # one script: one test


def test_streaming_and_adaptive_stop_once_a_program_passes_everything():
    with serve((RIGHT, WRONG)) as client:
        r = chat(client, best_of=8, adaptive=True, adaptive_wave=2, adaptive_min=2,
                 tests=TESTS, selector="majority")
        out = r.json()
        assert out["choices"][0]["message"]["content"] == RIGHT
        assert out["bon"]["search"]["stopped_early"] and out["bon"]["search"]["waves"] == 1
        with client.stream("POST", "/v1/chat/completions", json={
                "messages": MESSAGES, "best_of": 2, "tests": TESTS, "stream": True}) as s:
            body = "".join(s.iter_text())
    content = "".join(
        json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
        for line in body.splitlines()
        if line.startswith("data: {") and json.loads(line[6:])["choices"]
    )
    assert content == RIGHT


HOSTILE = {
    "write outside": "open('{outside}', 'w').write('escaped')",
    "connect out": "import socket\nsocket.create_connection(('127.0.0.1', {port}), 2)",
    "read the environment": "import os\nassert os.environ.get('BON_TEST_SECRET') is None\n"
                            "open('/proc/1/environ').read()",
    "start a process": "import subprocess\nsubprocess.run(['/bin/true'])",
    "take 8 GiB": "x = bytearray(8 << 30)",
}


def test_hostile_programs_fail_leave_nothing_and_the_server_stays_healthy(monkeypatch):
    outside = Path(tempfile.gettempdir()) / f"bon-escape-{uuid.uuid4().hex}"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    accepted: list[object] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(listener.accept())
            except OSError:
                continue

    watcher = threading.Thread(target=accept, daemon=True)
    watcher.start()
    monkeypatch.setenv("BON_TEST_SECRET", "hunter2")
    texts = []
    for body in HOSTILE.values():
        code = body.format(outside=outside, port=port)
        texts.append(f"```python\ndef add(a, b):\n    return a + b\n{code}\n```")
    try:
        with serve(texts) as client:
            r = chat(client, best_of=len(texts), tests=TESTS, return_candidates=True)
            assert r.status_code == 200, r.text
            for name, cand in zip(HOSTILE, r.json()["bon"]["candidates"], strict=True):
                assert cand["tests"]["passed"] == 0, (name, cand["tests"])
            assert client.get("/health").status_code == 200
            assert chat(client, best_of=1).status_code == 200
    finally:
        stop.set()
        watcher.join(2)
        listener.close()
    assert not outside.exists()
    assert accepted == []
    assert sandbox_leftovers() == ([], [])


def test_the_deadline_kills_running_candidates():
    with serve((FOREVER,), request_timeout=1.0, tests_timeout_s=30) as client:
        t0 = time.monotonic()
        r = chat(client, best_of=3, tests=TESTS, tests_timeout_s=30)
        assert r.status_code == 504, r.text
        assert time.monotonic() - t0 < 10
    deadline = time.monotonic() + 5
    while sandbox_leftovers() != ([], []) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sandbox_leftovers() == ([], [])


def test_a_client_that_hangs_up_kills_its_running_candidates():
    from asgi_app import app_with, served

    app = app_with(ScriptedGenerator((FOREVER,)), model="bon_server/embedded/arith-policy",
                   tests_timeout_s=30)
    seen: list[int] = []
    with served(app) as port:
        # the client gives up after 3 s; the candidates may run 30 s
        with pytest.raises(httpx.ReadTimeout), httpx.Client(timeout=3.0) as client:
            watcher = threading.Thread(target=lambda: seen.extend(wait_for_sandboxes()))
            watcher.start()
            try:
                client.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                            json={"messages": MESSAGES, "best_of": 2, "tests": TESTS,
                                  "tests_timeout_s": 30})
            finally:
                watcher.join()
        assert seen, "the candidates never ran"
        gone = time.monotonic() + 10
        while sandbox_leftovers() != ([], []) and time.monotonic() < gone:
            time.sleep(0.05)
        assert sandbox_leftovers() == ([], [])  # long before their 30 s were up
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200


def wait_for_sandboxes(timeout_s: float = 3.0) -> list[int]:
    """The processes running in a sandbox, once there are some (none within the time)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        procs = sandbox_leftovers()[1]
        if procs:
            return procs
        time.sleep(0.02)
    return []


@pytest.mark.parametrize(("body", "param"), [
    ({"tests": TESTS, "search": "beam"}, "tests"),
    ({"tests": TESTS, "prune": True}, "tests"),
    ({"tests": TESTS, "tests_timeout_s": 1000}, "tests_timeout_s"),
    ({"tests": []}, "tests"),
    ({"tests": ["assert True", 3]}, "tests"),
])
def test_bad_tests_are_a_400(body, param):
    generator = ScriptedGenerator(CANDIDATES)
    app = create_app(Settings(model="bon_server/embedded/arith-policy",
                              keepalive_interval_s=5.0), generator=generator)
    with TestClient(app) as client:
        r = chat(client, **body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert generator.calls == []


def test_tests_select_in_proxy_mode_too():
    """The upstream returns the candidates; bon-server runs their programs here."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": "m"}]})
        choices = [{"index": i, "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop", "token_ids": [1] * len(text)}
                   for i, text in enumerate(CANDIDATES)]
        return httpx.Response(200, json={"choices": choices, "usage": {
            "prompt_tokens": 5, "completion_tokens": 40, "total_tokens": 45}})

    gen = UpstreamGenerator(
        RemoteServer("http://up.test/v1", transport=httpx.MockTransport(handler)),
        model_name="m", upstream_model="m",
    )
    app = create_app(Settings(upstream="http://up.test/v1", upstream_model="m",
                              keepalive_interval_s=5.0),
                     generator=gen)
    with TestClient(app) as client:
        r = chat(client, model="m", best_of=4, selector="majority", tests=TESTS,
                 tests_timeout_s=2)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == RIGHT
