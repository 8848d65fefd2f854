"""Step search on the real engine (the session's server: the arithmetic policy, the tiny ORM
scoring each partial solution): a search returns, usage is what the engine generated, and a
client that goes away aborts every beam."""

from __future__ import annotations

import httpx
import pytest
from conftest import MODEL, Q, assert_aborted, send_long_chat, wait_for

pytestmark = pytest.mark.engine


def post(server, **body):
    body = {"model": MODEL, "messages": [{"role": "user", "content": Q}], "max_tokens": 96,
            **body}
    return httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=300)


@pytest.mark.parametrize("method", ["beam", "dvts", "particles"])
def test_a_search_request_returns_and_usage_is_what_the_engine_generated(server, method):
    tokens = server.metric("vllm:generation_tokens_total")
    r = post(server, best_of=8, beam_width=2, search=method, seed=3, selector="verifier",
             return_candidates=True)
    assert r.status_code == 200, r.text
    out = r.json()
    search, cands = out["bon"]["search"], out["bon"]["candidates"]
    assert search["mode"] == method and search["steps"] >= 2
    assert search["beams_expanded"] >= 8
    assert len(cands) == 8 and all(c["finish_reason"] in ("stop", "length") for c in cands)
    # every generated token is counted, dropped beams' included, and nothing else
    assert wait_for(lambda: server.metric("vllm:generation_tokens_total") - tokens
                    == out["usage"]["completion_tokens"], 5)
    assert out["usage"]["completion_tokens"] >= max(c["completion_tokens"] for c in cands)
    chosen = out["bon"]["chosen"][0]
    assert out["choices"][0]["message"]["content"] == cands[chosen]["text"]


@pytest.mark.parametrize("method", ["beam", "particles"])
def test_seeded_searches_repeat(server, method):
    a, b = (post(server, best_of=4, beam_width=2, search=method, seed=11).json()
            for _ in range(2))
    assert a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]
    assert a["usage"] == b["usage"]


def test_a_disconnect_aborts_every_beam(server):
    """A long search (steps of 460-token candidates without EOS) whose client hangs up: the
    engine holds nothing of it at once and stops generating for it."""
    tokens = server.metric("vllm:generation_tokens_total")
    sock = send_long_chat(server.port, best_of=16, search="beam", beam_width=4,
                          search_max_steps=1000)
    try:
        assert wait_for(lambda: server.metric("bon_engine_unfinished_requests") > 0)
        assert wait_for(lambda: server.metric("vllm:generation_tokens_total") > tokens + 200)
    finally:
        sock.close()
    assert_aborted(
        lambda: server.metric("vllm:generation_tokens_total"),
        lambda: server.metric("bon_engine_unfinished_requests"),
        tokens,
    )
    assert wait_for(lambda: server.metric("bon_requests_in_flight") == 0)
