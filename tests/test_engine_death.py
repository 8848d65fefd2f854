"""The engine dying under a live server: vLLM's engine-core process is killed mid-request.

``bon-server serve`` runs the policy on an in-process ``AsyncLLM``, whose engine core is a
child process. Killed (SIGKILL, as the OOM killer would), the requests it was working on
are answered 503 in OpenAI's shape (a stream: an error event, then ``[DONE]``), so are the
requests that come after, and ``/health`` turns 503 so an orchestrator replaces the server.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import httpx
import psutil
import pytest
from asgi_app import MESSAGES, openai_error
from conftest import LONG_REQUEST, ServerProcess, started, wait_for

pytestmark = pytest.mark.engine


def engine_core(server: ServerProcess) -> psutil.Process:
    """The server's vLLM engine-core child (``VLLM::EngineCore``), not multiprocessing's
    resource tracker that spawn also starts."""
    children = psutil.Process(server.proc.pid).children(recursive=False)
    cores = [c for c in children if "EngineCore" in " ".join(c.cmdline()) + c.name()]
    assert len(cores) == 1, [(c.pid, c.name(), c.cmdline()) for c in children]
    return cores[0]


@pytest.fixture
def orphans() -> Iterator[list[psutil.Process]]:
    """Processes the killed engine core leaves behind: gone by the end of the test."""
    procs: list[psutil.Process] = []
    yield procs
    _, alive = psutil.wait_procs(procs, timeout=30)
    for proc in alive:
        proc.kill()


def test_a_dead_engine_is_503_for_work_in_flight_work_after_and_health(tmp_path, orphans):
    with started(ServerProcess([], tmp_path / "engine-death.log")) as server:
        url = f"{server.base_url}/v1/chat/completions"
        assert httpx.get(f"{server.base_url}/health").status_code == 200
        results: dict[str, httpx.Response] = {}

        def post(name: str, **body) -> None:
            results[name] = httpx.post(url, json={"messages": MESSAGES, **body}, timeout=120)

        threads = [
            threading.Thread(target=post, args=("plain",), kwargs=LONG_REQUEST),
            threading.Thread(
                target=post,
                args=("stream",),
                kwargs={**LONG_REQUEST, "best_of": 32, "stream": True},
            ),
        ]
        for t in threads:
            t.start()
        # both requests are in the engine, generating
        assert wait_for(lambda: server.metric("bon_engine_unfinished_requests") == 96)
        core = engine_core(server)
        orphans.extend(core.children(recursive=True))  # its workers, if the executor has any
        core.kill()
        core.wait(timeout=30)
        for t in threads:
            t.join(timeout=60)
            assert not t.is_alive(), "a request in flight was never answered"

        error = openai_error(results["plain"], 503)
        assert error["type"] == "service_unavailable"
        events = [e for e in results["stream"].text.split("\n\n") if e.startswith("data: ")]
        assert results["stream"].status_code == 200 and events[-1] == "data: [DONE]"
        assert json.loads(events[-2][len("data: ") :])["error"]["type"] == "service_unavailable"

        r = httpx.post(url, json={"messages": MESSAGES, "best_of": 2, "max_tokens": 8}, timeout=60)
        assert openai_error(r, 503)["type"] == "service_unavailable"
        health = httpx.get(f"{server.base_url}/health", timeout=30)
        assert health.status_code == 503 and health.json()["status"] == "unhealthy"
        assert server.alive  # the server answers; replacing it is the orchestrator's call
        assert server.metric("bon_requests_in_flight") == 0
        assert server.metric("bon_sequences_in_flight") == 0
