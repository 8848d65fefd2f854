"""Proxy mode: bon-server in front of an OpenAI-compatible upstream.

Three layers, cheapest first:

1. ``httpx.MockTransport`` upstreams: what one Best-of-N request sends (ONE call,
   ``n = best_of``), how choices become candidates, retries and backoff, the 4xx / 5xx /
   timeout mapping, the ``return_token_ids`` fallback, cancellation.
2. Fault tests with no engine: bon-server (the real CLI, in a subprocess) against a
   closed port, and the generator against a peer that accepts and never answers: an
   OpenAI-shaped 503 / 504, quickly, never a hang or a 500.
3. ``engine``: real vLLM OpenAI servers on loopback (the embedded policy; a tiny ORM and
   a tiny PRM with ``--runner pooling``), bon-server in front, and the client-level
   checks of the in-process suite through the official ``openai`` SDK, with the remote
   verifiers' scores checked against the in-process scorers on the same candidates.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
from asgi_app import openai_error, running
from conftest import (
    ARITH_POLICY,
    MODEL,
    Q,
    ServerProcess,
    assert_aborted,
    chat,
    logprob_selected,
    pruned_long_request,
    rendered,
    send_long_chat,
    started,
    top_three_of_eight,
    wait_for,
)
from fastapi.testclient import TestClient
from upstream_servers import VLLMServer, closed_port, vllm_servers, workdir

from bon_server.app import create_app
from bon_server.config import Settings
from bon_server.errors import (
    DeadlineExceededError,
    InvalidRequestError,
    RelayedError,
    ServiceUnavailableError,
    UpstreamError,
)
from bon_server.generators import build_generator
from bon_server.generators.fake import ConstantScorer
from bon_server.generators.upstream import UpstreamGenerator
from bon_server.types import Message, Prompt, SamplingParams
from bon_server.upstream_client import ModelResolver, RemoteServer

CHAT = Prompt(messages=(Message("user", "What is 2 + 3?"),))

# ------------------------------------------------------------ a scripted upstream


def chat_reply(n: int, *, logprobs: bool = False, token_ids: bool = True) -> dict[str, Any]:
    """What vLLM answers: each candidate "= 5" then EOS (4 tokens, EOS in ids and logprobs)."""
    choices = []
    for i in range(n):
        choice: dict[str, Any] = {
            "index": i,
            "message": {"role": "assistant", "content": "= 5"},
            "finish_reason": "stop" if i % 2 == 0 else "length",
            "stop_reason": None,
        }
        if token_ids:
            choice["token_ids"] = [10, 11, 12, 2] if i % 2 == 0 else [10, 11, 12]
        if logprobs:
            tokens = ["=", " ", "5", "<|end|>"] if i % 2 == 0 else ["=", " ", "5"]
            choice["logprobs"] = {
                "content": [
                    {
                        "token": t,
                        "logprob": -0.5 * (i + 1),
                        "top_logprobs": [
                            {"token": t, "logprob": -0.5 * (i + 1)},
                            {"token": "x", "logprob": -9.0},
                        ],
                    }
                    for t in tokens
                ]
            }
        choices.append(choice)
    completion = sum(4 if i % 2 == 0 else 3 for i in range(n))
    return {
        "object": "chat.completion",
        "choices": choices,
        "usage": {
            "prompt_tokens": 7,
            "completion_tokens": completion,
            "total_tokens": 7 + completion,
        },
    }


class Upstream:
    """A MockTransport handler that records requests and answers from a script."""

    def __init__(self, answer: Callable[[httpx.Request, dict[str, Any]], Any] | None = None):
        self.requests: list[tuple[str, str, dict[str, Any]]] = []
        self.answer = answer

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else {}
        self.requests.append((request.method, request.url.path, body))
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": [{"id": "up-model"}]})
        if self.answer is not None:
            result = self.answer(request, body)
            if isinstance(result, httpx.Response):
                return result
            if isinstance(result, Exception):
                raise result
            return httpx.Response(200, json=result)
        return httpx.Response(200, json=chat_reply(body["n"], logprobs=body.get("logprobs", False)))

    @property
    def posts(self) -> list[tuple[str, dict[str, Any]]]:
        return [(path, body) for method, path, body in self.requests if method == "POST"]


def generator(upstream: Upstream, **settings: Any) -> UpstreamGenerator:
    settings = {"upstream": "http://up.test/v1", **settings}
    remote_defaults = {"upstream_retries": 2}
    gen = UpstreamGenerator.from_settings(
        Settings(**{**remote_defaults, **settings}), transport=httpx.MockTransport(upstream)
    )
    gen.remote.backoff_s = 0.001  # retries without the wait
    return gen


def run(gen: UpstreamGenerator, prompt: Prompt = CHAT, n: int = 4, **params: Any):
    async def go():
        try:
            return await gen.generate(gen.prepare(prompt, SamplingParams(**params), n))
        finally:
            await gen.aclose()

    return asyncio.run(go())


def failing(gen: UpstreamGenerator, exc_type: type[Exception], **params: Any) -> Exception:
    with pytest.raises(exc_type) as info:
        run(gen, **params)
    return info.value


# ------------------------------------------------------------ 1. the request sent


def test_one_upstream_call_with_n_best_of_and_the_sampling_params():
    up = Upstream()
    run(
        up_gen := generator(up),
        n=8,
        temperature=0.7,
        top_p=0.9,
        max_tokens=64,
        seed=3,
        stop=("\n\n",),
        presence_penalty=0.5,
        logit_bias=((5, 1.0),),
    )
    assert up_gen.remote.attempts == 2  # the model discovery, then ONE generation call
    (path, body) = up.posts[0]
    assert path == "/v1/chat/completions"
    assert body["model"] == "up-model"  # discovered from GET /v1/models
    assert body["messages"] == [{"role": "user", "content": "What is 2 + 3?"}]
    assert body["n"] == 8 and body["temperature"] == 0.7 and body["top_p"] == 0.9
    assert body["max_tokens"] == 64 and body["seed"] == 3 and body["stop"] == ["\n\n"]
    assert body["presence_penalty"] == 0.5 and body["logit_bias"] == {"5": 1.0}
    assert body["return_token_ids"] is True
    # vLLM's extras only when set: a plain OpenAI server would refuse them
    for extra in ("top_k", "min_p", "repetition_penalty", "ignore_eos", "logprobs", "stream"):
        assert extra not in body


def test_vllm_extras_and_logprobs_are_sent_when_asked():
    up = Upstream()
    run(
        generator(up, upstream_model="policy"),
        top_k=5,
        min_p=0.1,
        repetition_penalty=1.1,
        ignore_eos=True,
        logprobs=2,
    )
    assert [m for m, *_ in up.requests] == ["POST"]  # a configured model needs no discovery
    body = up.posts[0][1]
    assert body["model"] == "policy"
    assert (body["top_k"], body["min_p"], body["repetition_penalty"]) == (5, 0.1, 1.1)
    assert body["ignore_eos"] is True
    assert body["logprobs"] is True and body["top_logprobs"] == 2


def test_text_and_token_prompts_go_to_completions():
    def answer(request, body):
        choice = {"index": 0, "text": "= 5", "finish_reason": "stop", "token_ids": [1, 2]}
        if "logprobs" in body:
            choice["logprobs"] = {
                "tokens": ["=", " ", "5", "<|end|>"],
                "token_logprobs": [-0.1, -0.2, -0.3, -0.4],
                "top_logprobs": [
                    {"=": -0.1, "-": -2.0},
                    {" ": -0.2},
                    {"5": -0.3},
                    {"<|end|>": -0.4},
                ],
            }
        return {
            "choices": [dict(choice, index=i) for i in range(body["n"])],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2 * body["n"]},
        }

    up = Upstream(answer)
    gen = generator(up, upstream_model="m")
    text = run(gen, Prompt(text="What is 2 + 3?"), n=2, logprobs=1).candidates[0]
    assert [(t.token, t.top) for t in text.logprobs[:2]] == [
        ("=", (("=", -0.1),)),
        (" ", ((" ", -0.2),)),
    ]
    assert len(text.logprobs) == 3 and text.cumulative_logprob == pytest.approx(-1.0)
    gen = generator(up, upstream_model="m")
    result = run(gen, Prompt(token_ids=(1, 2, 3)), n=2)
    (p1, b1), (p2, b2) = up.posts
    assert p1 == p2 == "/v1/completions"
    assert b1["prompt"] == "What is 2 + 3?" and b1["logprobs"] == 1
    assert b2["prompt"] == [1, 2, 3] and "logprobs" not in b2
    assert result.prompt_tokens == 3


def test_max_tokens_limit_and_bad_token_prompts_are_400_before_any_call():
    up = Upstream()
    gen = generator(up, max_tokens_limit=32)
    with pytest.raises(InvalidRequestError, match="empty"):
        gen.prepare(Prompt(token_ids=()), SamplingParams(), 2)
    with pytest.raises(InvalidRequestError, match="negative"):
        gen.prepare(Prompt(token_ids=(1, -4)), SamplingParams(), 2)
    # no max_tokens: the server's limit is asked for
    assert gen.prepare(CHAT, SamplingParams(), 2).payload[1]["max_tokens"] == 32
    assert up.requests == []


def test_max_tokens_over_the_limit_is_refused_by_the_pipeline_before_any_call():
    """The policy's check, not the generator's (it had a second, unreachable copy)."""
    up = Upstream()
    app = create_app(
        Settings(max_tokens_limit=32),
        generator=generator(up, upstream_model="m", max_tokens_limit=32),
    )
    with TestClient(app) as client:
        body = {"model": MODEL, "messages": [{"role": "user", "content": Q}], "max_tokens": 33}
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "max_tokens"
        r = client.post("/v1/chat/completions", json={**body, "max_tokens": 32})
        assert r.status_code == 200, r.text
    assert [b["max_tokens"] for _, b in up.posts] == [32]


# -------------------------------------------------------- 1. the reply mapped back


def test_choices_become_candidates_as_in_process():
    result = run(generator(Upstream()), n=4, logprobs=2)
    assert result.prompt_tokens == 7
    assert [c.finish_reason for c in result.candidates] == ["stop", "length", "stop", "length"]
    first, second = result.candidates[:2]
    assert first.token_ids == (10, 11, 12, 2)  # the EOS counts, as in-process
    # the EOS is in the cumulative logprob (the logprob selector's mean) ...
    assert first.cumulative_logprob == pytest.approx(-2.0)
    assert first.mean_logprob == pytest.approx(-0.5)
    # ... but not among the logprobs shown with the text
    assert "".join(t.token for t in first.logprobs) == first.text == "= 5"
    assert first.logprobs[0].top == (("=", -0.5), ("x", -9.0))
    assert len(second.logprobs) == 3 and second.cumulative_logprob == pytest.approx(-3.0)


def test_without_logprobs_there_is_no_cumulative_logprob():
    result = run(generator(Upstream()), n=2)
    assert all(c.logprobs is None and c.cumulative_logprob is None for c in result.candidates)
    assert sum(len(c.token_ids) for c in result.candidates) == 7


def test_a_server_refusing_return_token_ids_is_asked_again_without_it():
    def answer(request, body):
        if "return_token_ids" in body:
            return httpx.Response(
                400,
                json={
                    "error": {
                        "message": "Unrecognized request argument supplied: return_token_ids",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": None,
                    }
                },
            )
        return chat_reply(body["n"], token_ids=False, logprobs=body.get("logprobs", False))

    up = Upstream(answer)
    gen = generator(up, upstream_model="gpt")
    result = run(gen, n=3)
    assert gen.ask_token_ids is False
    assert ["return_token_ids" in b for _, b in up.posts] == [True, False]
    # no ids and no logprobs: usage's total shared out, exact in sum
    assert [len(c.token_ids) for c in result.candidates] == [4, 4, 3]
    assert all(t == -1 for c in result.candidates for t in c.token_ids)
    gen = generator(up, upstream_model="gpt")
    gen.ask_token_ids = False
    result = run(gen, n=2, logprobs=0)  # with logprobs, lengths are exact again
    assert [len(c.token_ids) for c in result.candidates] == [4, 3]


def test_a_short_or_malformed_reply_is_502():
    up = Upstream(lambda request, body: chat_reply(body["n"] - 1))
    assert failing(generator(up, upstream_model="m"), UpstreamError).status_code == 502
    up = Upstream(lambda request, body: httpx.Response(200, text="<html>gateway</html>"))
    assert failing(generator(up, upstream_model="m"), UpstreamError).status_code == 502
    up = Upstream(
        lambda request, body: {
            "choices": [
                {"index": i, "message": {"content": "x"}, "finish_reason": "abort"}
                for i in range(body["n"])
            ]
        }
    )
    assert "abort" in failing(generator(up, upstream_model="m"), UpstreamError).message


def _malformed(mutate: Callable[[dict[str, Any]], None]) -> Upstream:
    """A reply to a completions or chat call with logprobs, then ``mutate``d."""

    def answer(request, body):
        if request.url.path.endswith("/completions") and "messages" not in body:
            reply = {
                "choices": [
                    {
                        "index": i,
                        "text": "= 5",
                        "finish_reason": "length",
                        "token_ids": [10, 11, 12],
                        "logprobs": {
                            "tokens": ["=", " ", "5"],
                            "token_logprobs": [-0.1, -0.2, -0.3],
                            "top_logprobs": [{"=": -0.1}, {" ": -0.2}, {"5": -0.3}],
                        },
                    }
                    for i in range(body["n"])
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": 3 * body["n"]},
            }
        else:
            reply = chat_reply(body["n"], logprobs=True)
        mutate(reply)
        return reply

    return Upstream(answer)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """``reply[...path...] = value``; a dotted path, integer parts index lists."""

    def mutate(reply: dict[str, Any]) -> None:
        *parents, last = [int(k) if k.isdigit() else k for k in path.split(".")]
        node: Any = reply
        for key in parents:
            node = node[key]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value

    return mutate


TEXT = Prompt(text="What is 2 + 3?")
MALFORMED = [
    (TEXT, _set("choices.0.logprobs.tokens", KeyError)),  # KeyError
    (TEXT, _set("choices.0.logprobs.token_logprobs", [None, -0.2, -0.3])),  # TypeError
    (TEXT, _set("choices.0.logprobs.token_logprobs", [-0.1])),  # zip strict: ValueError
    (TEXT, _set("choices.0.logprobs.top_logprobs", [[1], [2], [3]])),  # AttributeError
    (TEXT, _set("choices.0.token_ids", ["x", 11, 12])),  # ValueError
    (TEXT, _set("choices.0.logprobs.tokens", [1, 2, 3])),  # not strings
    (CHAT, _set("usage", [7])),  # AttributeError
    (CHAT, _set("choices.0.logprobs.content.0.logprob", None)),  # TypeError
    (CHAT, _set("choices.0.logprobs.content", [{"logprob": -1.0}])),  # KeyError
    (CHAT, _set("choices.0.message", "= 5")),  # AttributeError
    (CHAT, _set("choices.0.message.content", ["= 5"])),  # not a string
    (CHAT, _set("choices.0.finish_reason", ["stop"])),  # unhashable
    (CHAT, _set("prompt_token_ids", 5)),  # with no usage below: len(5)
    (CHAT, _set("choices", [None, None, None, None])),
]


@pytest.mark.parametrize(("prompt", "mutate"), MALFORMED)
def test_a_malformed_reply_is_502_never_a_500(prompt, mutate):
    def with_no_usage(reply):
        mutate(reply)
        if isinstance(reply.get("prompt_token_ids"), int):
            reply.pop("usage")

    up = _malformed(with_no_usage)
    exc = failing(generator(up, upstream_model="m"), UpstreamError, prompt=prompt, logprobs=1)
    assert exc.status_code == 502 and "upstream" in exc.message


def test_a_malformed_reply_reaches_the_client_as_an_openai_shaped_502():
    up = _malformed(_set("choices.0.logprobs.token_logprobs", [None, -0.2, -0.3]))
    app = create_app(Settings(), generator=generator(up, upstream_model="m"))
    with TestClient(app) as client:
        body = {"model": MODEL, "prompt": "What is 2 + 3?", "best_of": 2, "logprobs": 1}
        r = client.post("/v1/completions", json=body)
    error = openai_error(r, 502)
    assert error["type"] == "upstream_error"
    assert error["message"].startswith("malformed upstream reply")


# --------------------------------------------------- 1. retries and error mapping


def flaky(failures: list[Any]) -> Upstream:
    """An upstream that fails with each of ``failures`` in turn, then answers."""

    def answer(request, body):
        if failures:
            failure = failures.pop(0)
            if isinstance(failure, int):
                return httpx.Response(failure, json={"error": {"message": f"boom {failure}"}})
            return failure
        return chat_reply(body["n"])

    return Upstream(answer)


def test_connection_errors_and_5xx_are_retried_with_backoff():
    up = flaky([httpx.ConnectError("refused"), 503, httpx.RemoteProtocolError("closed")])
    gen = generator(up, upstream_model="m", upstream_retries=3)
    result = run(gen, n=2)
    assert len(result.candidates) == 2 and gen.remote.attempts == 4


def test_retries_run_out_unreachable_is_503_failing_is_502():
    up = flaky([httpx.ConnectError("refused")] * 3)
    err = failing(generator(up, upstream_model="m"), ServiceUnavailableError)
    assert err.status_code == 503 and "unreachable after 3 attempts" in err.message
    assert err.headers["Retry-After"] == "1"
    assert "up.test" not in err.message  # the URL is logged, never sent
    up = flaky([500, 502, 503])
    err = failing(generator(up, upstream_model="m"), UpstreamError)
    assert err.status_code == 502 and "boom 503" in err.message


def test_backoff_grows_and_is_capped():
    remote = RemoteServer("http://x", backoff_s=0.5)
    waits = [[remote._backoff(a) for _ in range(50)] for a in (1, 2, 3, 10)]
    assert all(0.25 <= w <= 0.75 for w in waits[0])
    assert all(0.5 <= w <= 1.5 for w in waits[1])
    assert all(1.0 <= w <= 3.0 for w in waits[2])
    assert all(w <= 7.5 for w in waits[3])


CONTEXT_400 = {
    "message": "This model's maximum context length is 512 tokens. However, your "
    "prompt contains at least 513 input tokens.",
    "type": "BadRequestError",
    "param": "input_tokens",
    "code": 400,
}


@pytest.mark.parametrize(
    ("status", "error", "headers", "expected"),
    [
        # the client's request: a 400 (its message, param, code kept); 422 is our 400
        (400, CONTEXT_400, {}, 400),
        (422, {"message": "unprocessable", "param": "temperature"}, {}, 400),
        # relayed as themselves
        (413, {"message": "too large"}, {}, 413),
        (429, {"message": "slow down", "code": "rate_limit_exceeded"}, {"retry-after": "7"}, 429),
        # bon-server's own key or model: a 502, never the client's 401 / 404
        (401, {"message": "bad key", "type": "authentication_error"}, {}, 502),
        (403, {"message": "forbidden"}, {}, 502),
        (404, {"message": "The model `m` does not exist.", "param": "model", "code": 404}, {}, 502),
        (409, {"message": "conflict"}, {}, 502),
    ],
)
def test_an_upstream_4xx_is_mapped_and_never_retried(status, error, headers, expected, caplog):
    up = Upstream(
        lambda request, body: httpx.Response(status, json={"error": error}, headers=headers)
    )
    gen = generator(up, upstream_model="m")
    kind = {400: InvalidRequestError, 502: UpstreamError}.get(expected, RelayedError)
    with caplog.at_level("WARNING", logger="bon_server.upstream_client"):
        exc = failing(gen, kind)
    assert gen.remote.attempts == 1
    assert exc.status_code == expected
    body = exc.body()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    if expected == 502:
        assert body["type"] == "upstream_error" and body["param"] is None
        assert exc.message.startswith(f"upstream refused bon-server's request (HTTP {status})")
        assert error["message"] in exc.message
        assert f"HTTP {status}" in caplog.text and "up.test" in caplog.text  # the log has it
        return
    assert exc.message == error["message"] and exc.param == error.get("param")
    if status == 400:
        assert body["code"] == "context_length_exceeded"
    if expected == 400:
        assert body["type"] == "invalid_request_error"
    if status == 413:
        assert body["type"] == "invalid_request_error" and exc.headers == {}
    if status == 429:
        assert exc.headers == {"Retry-After": "7"} and body["code"] == "rate_limit_exceeded"


def test_an_unreachable_upstream_is_named_not_located(caplog):
    """The 503's message names the hop; its URL (maybe user:pass@host) is only logged."""

    def refuse(request):
        raise httpx.ConnectError("[Errno 111] Connection refused to 10.1.2.3", request=request)

    remote = RemoteServer(
        "http://alice:s3cret@10.1.2.3:8000/v1",
        retries=1,
        backoff_s=0.001,
        transport=httpx.MockTransport(refuse),
    )

    async def go():
        try:
            await remote.post("/completions", {"prompt": "x"})
        finally:
            await remote.aclose()

    logs = caplog.at_level("WARNING", logger="bon_server.upstream_client")
    with logs, pytest.raises(ServiceUnavailableError) as info:
        asyncio.run(go())
    message = info.value.message
    assert message == "upstream is unreachable after 2 attempts: ConnectError"
    assert "10.1.2.3" not in message and "s3cret" not in message
    assert "http://10.1.2.3:8000/v1/completions is unreachable" in caplog.text
    assert "s3cret" not in caplog.text


def test_concurrent_requests_share_one_model_discovery():
    """5 requests while /models fails: ONE retried discovery, its error given to all."""
    delay = 0.1

    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(delay)
        return httpx.Response(503, json={"error": {"message": "loading"}})

    async def go():
        remote = RemoteServer(
            "http://up.test/v1", retries=2, backoff_s=0.001, transport=httpx.MockTransport(handler)
        )
        resolver = ModelResolver(remote, None)
        start = time.monotonic()
        results = await asyncio.gather(
            *(resolver.resolve() for _ in range(5)), return_exceptions=True
        )
        elapsed = time.monotonic() - start
        attempts = remote.attempts
        # the failure is not remembered: the next caller starts a fresh discovery
        with pytest.raises(UpstreamError):
            await resolver.resolve()
        await remote.aclose()
        return results, elapsed, attempts, remote.attempts

    results, elapsed, attempts, after = asyncio.run(go())
    assert all(isinstance(r, UpstreamError) and "loading" in r.message for r in results)
    assert attempts == 3  # one discovery (3 attempts), not 5 x 3 one after another
    assert elapsed < 2 * 3 * delay + 0.5  # one discovery's time, not five
    assert after == 6


def test_a_cancelled_waiter_leaves_the_shared_discovery_to_the_others():
    async def go():
        gate = asyncio.Event()

        async def handler(request: httpx.Request) -> httpx.Response:
            await gate.wait()
            return httpx.Response(200, json={"data": [{"id": "up-model"}]})

        remote = RemoteServer("http://up.test/v1", transport=httpx.MockTransport(handler))
        resolver = ModelResolver(remote, None)
        first = asyncio.ensure_future(resolver.resolve())
        second = asyncio.ensure_future(resolver.resolve())
        await asyncio.sleep(0.05)
        first.cancel()
        await asyncio.sleep(0.01)
        gate.set()
        name = await second
        await remote.aclose()
        return first.cancelled(), name, remote.attempts

    assert asyncio.run(go()) == (True, "up-model", 1)


def test_a_read_timeout_is_504_and_not_retried():
    up = flaky([httpx.ReadTimeout("slow")])
    gen = generator(up, upstream_model="m")
    assert failing(gen, DeadlineExceededError).status_code == 504
    assert gen.remote.attempts == 1


def test_a_silent_upstream_times_out_instead_of_hanging():
    """A real socket that accepts and never answers: 504 after --upstream-timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        settings = Settings(
            upstream=f"http://127.0.0.1:{port}/v1", upstream_model="m", upstream_timeout=0.5
        )
        gen = UpstreamGenerator.from_settings(settings)
        start = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            run(gen, n=2)
        assert time.monotonic() - start < 5


def test_cancelling_generate_cancels_the_upstream_call():
    started, released = threading.Event(), []

    async def handler(request: httpx.Request) -> httpx.Response:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            released.append(request.url.path)
            raise
        return httpx.Response(200, json=chat_reply(4))

    async def go():
        gen = UpstreamGenerator(
            RemoteServer("http://up.test/v1", transport=httpx.MockTransport(handler)),
            model_name="x",
            upstream_model="m",
        )
        task = asyncio.ensure_future(gen.generate(gen.prepare(CHAT, SamplingParams(), 16)))
        while not started.is_set():
            await asyncio.sleep(0.01)
        assert gen.num_unfinished() == 16
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert gen.num_unfinished() == 0
        await gen.aclose()

    asyncio.run(go())
    assert released == ["/v1/chat/completions"]


# ------------------------------------------- 1b. one streamed request per candidate


def sse(*events: Any, done: bool = True) -> bytes:
    """A server-sent-events body as vLLM writes it."""
    lines = [f"data: {json.dumps(e) if not isinstance(e, str) else e}\n\n" for e in events]
    return ("".join(lines) + ("data: [DONE]\n\n" if done else "")).encode()


def chunk(text: str | None = None, ids: list[int] | None = None, finish: str | None = None,
          **extra: Any) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "delta": {} if text is None else {"content": text},
                              "finish_reason": finish, **extra}
    if ids is not None:
        choice["token_ids"] = ids
    return {"object": "chat.completion.chunk", "choices": [choice]}


USAGE = {"object": "chat.completion.chunk", "choices": [],
         "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}
STREAM = (chunk("", None), chunk("= ", [10, 11]), chunk("5", [12]), chunk("", [2], "stop"), USAGE)


def follow(gen: UpstreamGenerator, index: int = 0, **params: Any) -> list[Any]:
    """Every Progress of candidate ``index`` of a best_of=4 request."""

    async def go():
        try:
            request = gen.prepare(CHAT, SamplingParams(**params), 4)
            return [p async for p in gen.stream(request, index)]
        finally:
            await gen.aclose()

    return asyncio.run(go())


def streaming(body_of: Callable[[dict[str, Any]], bytes]) -> Upstream:
    return Upstream(lambda request, body: httpx.Response(200, content=body_of(body)))


def test_a_candidate_streams_alone_with_n_1_and_its_own_seed():
    up = streaming(lambda body: sse(*STREAM))
    progress = follow(generator(up, upstream_model="m"), index=2, seed=3, max_tokens=9)
    (path, body), = up.posts
    assert path == "/v1/chat/completions"
    assert body["n"] == 1 and body["stream"] is True and body["seed"] == 5  # seed + index
    assert body["stream_options"] == {"include_usage": True} and body["return_token_ids"]
    assert body["max_tokens"] == 9 and body["model"] == "m"
    assert [p.text for p in progress] == ["= ", "= 5", "= 5", "= 5"]
    assert [p.done for p in progress] == [False, False, False, True]
    last = progress[-1]
    assert last.candidate.token_ids == (10, 11, 12, 2) and last.candidate.finish_reason == "stop"
    assert last.prompt_tokens == 7 and progress[0].prompt_tokens is None


def test_a_stream_counts_tokens_without_ids_and_keeps_logprobs():
    def body_of(body):
        if "return_token_ids" in body:  # refused, as OpenAI would
            return b""
        lp = {"content": [{"token": "5", "logprob": -0.25, "top_logprobs": []}]}
        return sse(chunk("= "), chunk("5", logprobs=lp), chunk("", finish="length"), USAGE)

    def answer(request, body):
        if "return_token_ids" in body:
            return httpx.Response(400, json={"error": {"message": "bad: return_token_ids"}})
        return httpx.Response(200, content=body_of(body))

    gen = generator(Upstream(answer), upstream_model="m")
    progress = follow(gen)
    assert gen.ask_token_ids is False
    assert [len(p.candidate.token_ids) for p in progress] == [1, 2, 3]  # chunks, then usage
    assert progress[-1].candidate.finish_reason == "length"
    gen = generator(Upstream(answer), upstream_model="m")
    gen.ask_token_ids = False
    last = follow(gen, logprobs=0)[-1].candidate
    assert last.cumulative_logprob == -0.25 and [e.token for e in last.logprobs] == ["5"]


@pytest.mark.parametrize(
    ("body", "error", "needle"),
    [
        (sse(*STREAM[:3], done=False), UpstreamError, "without [DONE]"),
        (sse(chunk("x"), "{not json"), UpstreamError, "not JSON"),
        (sse(chunk("x", finish="abort")), UpstreamError, "ended with 'abort'"),
        (sse(chunk("x")), UpstreamError, "ended with None"),
        (sse(chunk(None, finish=None) | {"choices": [{"delta": 5}]}), UpstreamError, "malformed"),
        (sse({"error": {"message": "too long", "code": 400}}), InvalidRequestError, "too long"),
        (sse({"error": {"message": "boom", "code": 500}}), UpstreamError, "mid-stream: boom"),
    ],
)
def test_a_broken_stream_is_an_openai_error_never_a_500(body, error, needle):
    gen = generator(streaming(lambda _: body), upstream_model="m")
    with pytest.raises(error) as info:
        follow(gen)
    assert needle in info.value.message and info.value.status_code in (400, 502)


def test_a_stream_that_cannot_open_is_retried_then_mapped():
    calls = []

    def answer(request, body):
        calls.append(1)
        return httpx.Response(503, json={"error": {"message": "overloaded"}})

    with pytest.raises(UpstreamError) as info:
        follow(generator(Upstream(answer), upstream_model="m"))
    assert len(calls) == 3 and "overloaded" in info.value.message  # 1 + 2 retries
    up = Upstream(lambda r, b: httpx.Response(400, json={"error": {"message": "context"}}))
    with pytest.raises(InvalidRequestError):
        follow(generator(up, upstream_model="m"))
    assert len(up.posts) == 1  # a 4xx is never retried


def test_closing_a_candidate_closes_its_upstream_stream_at_once():
    """Closing the iteration (what pruning does) closes the HTTP stream there and then, not
    when the generators are collected: that close is what aborts the request upstream."""
    closed: list[bool] = []

    class Body(httpx.AsyncByteStream):  # as a connection: its aclose() is the hang-up
        async def __aiter__(self):
            yield sse(chunk("1 + 1 = 2\n", [1, 2, 3]), done=False)
            await asyncio.sleep(60)

        async def aclose(self) -> None:
            closed.append(True)

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Body())

    async def go():
        gen = UpstreamGenerator(
            RemoteServer("http://up.test/v1", transport=httpx.MockTransport(handler)),
            model_name="x", upstream_model="m",
        )
        follow = gen.stream(gen.prepare(CHAT, SamplingParams(), 4), 0)
        assert (await follow.__anext__()).text == "1 + 1 = 2\n"
        assert gen.num_unfinished() == 1 and closed == []
        await follow.aclose()
        assert closed == [True] and gen.num_unfinished() == 0
        await gen.aclose()

    asyncio.run(go())


def test_pruning_in_proxy_mode_closes_the_pruned_streams():
    """Four candidates each write a step, then would take a minute for the rest: the ORM
    ranks them on that step, the lowest two are pruned, and exactly their upstream streams
    are closed (a vLLM upstream aborts those requests); the survivors finish."""
    closed: list[int] = []
    finish = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": "m"}]})
        seed = json.loads(request.content)["seed"]

        async def body():
            try:
                yield sse(chunk("1 + 1 = 2\n", [1, 2, 3]), done=False)
                await asyncio.wait_for(finish.wait(), 60)  # the rest of the candidate
                yield sse(chunk("The answer is 2.", [4, 5], "stop"), USAGE)
            finally:
                closed.append(seed)

        return httpx.Response(200, content=body())

    async def release_after_pruning():
        while len(closed) < 2:
            await asyncio.sleep(0.01)
        finish.set()

    gen = UpstreamGenerator(
        RemoteServer("http://up.test/v1", transport=httpx.MockTransport(handler)),
        model_name=MODEL, upstream_model="m",
    )
    scores = (0.1, 0.9, 0.2, 0.8)  # candidates 0 and 2 rank lowest
    app = create_app(Settings(verifier="/unused", keepalive_interval_s=0.02), generator=gen,
                     scorer=ConstantScorer(scores))

    async def go():
        async with running(app) as c:
            releaser = asyncio.ensure_future(release_after_pruning())
            r = await c.post("/v1/chat/completions", json={
                "model": MODEL, "messages": [{"role": "user", "content": Q}], "best_of": 4,
                "prune": True, "seed": 10, "selector": "verifier", "return_candidates": True})
            await releaser
            return r

    r = asyncio.run(go())
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["bon"]["search"]["candidates_pruned"] == 2
    assert [c["state"] for c in out["bon"]["candidates"]] == ["pruned", "finished"] * 2
    assert sorted(closed[:2]) == [10, 12]  # the pruned ones' streams, closed first
    assert out["usage"]["prompt_tokens"] == 7  # from the survivors' streams
    assert out["usage"]["completion_tokens"] == 2 * 3 + 2 * 5


def test_health_follows_the_upstream_and_its_model():
    async def go(gen: UpstreamGenerator):
        try:
            await gen.check_health()
        finally:
            await gen.aclose()

    asyncio.run(go(generator(Upstream())))  # lists up-model: healthy
    with pytest.raises(UpstreamError, match="does not serve model 'other'"):
        asyncio.run(go(generator(Upstream(), upstream_model="other")))
    dead = f"http://127.0.0.1:{closed_port()}/v1"
    with pytest.raises(ServiceUnavailableError):
        asyncio.run(go(UpstreamGenerator.from_settings(Settings(upstream=dead))))


def test_build_generator_picks_the_upstream_without_loading_an_engine():
    gen = build_generator(Settings(upstream="http://up.test/v1", upstream_api_key="k"))
    assert isinstance(gen, UpstreamGenerator)
    assert gen.remote.client.headers["authorization"] == "Bearer k"
    asyncio.run(gen.aclose())


# ------------------------------------------- 1. the HTTP surface, mock upstream


def test_the_app_maps_upstream_failures_to_openai_errors():
    answers = iter(
        [
            httpx.Response(
                400,
                json={
                    "error": {
                        "message": "Token id 99999 is out of vocabulary",
                        "type": "BadRequestError",
                        "param": None,
                        "code": 400,
                    }
                },
            ),
            httpx.ConnectError("refused"),
            httpx.ConnectError("refused"),
            httpx.ConnectError("refused"),
        ]
    )
    up = Upstream(lambda request, body: next(answers))
    app = create_app(Settings(), generator=generator(up, upstream_model="m"))
    with TestClient(app) as client:
        body = {"model": MODEL, "messages": [{"role": "user", "content": Q}], "best_of": 2}
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 400
        assert r.json()["error"]["message"] == "Token id 99999 is out of vocabulary"
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["type"] == "service_unavailable"


def _refusing_app(status: int, error: dict[str, Any], headers: dict[str, str] | None = None):
    """The app over an upstream that answers every generation with ``status``."""
    up = Upstream(lambda request, body: httpx.Response(status, json={"error": error},
                                                       headers=headers or {}))
    return up, create_app(Settings(), generator=generator(up, upstream_model="m"))


CHAT_BODY = {"model": MODEL, "messages": [{"role": "user", "content": Q}], "best_of": 2}


def test_an_upstream_429_reaches_the_client_with_its_retry_after():
    error = {"message": "slow down", "type": "rate_limit_error", "code": "rate_limit_exceeded"}
    up, app = _refusing_app(429, error, {"retry-after": "17"})
    with TestClient(app) as client:
        r = client.post("/v1/chat/completions", json=CHAT_BODY)
    body = openai_error(r, 429)
    assert r.headers["retry-after"] == "17"
    assert body["message"] == "slow down" and body["code"] == "rate_limit_exceeded"
    assert len(up.posts) == 1  # a 429 is the upstream's answer, not retried


def test_an_upstream_413_reaches_the_client_as_a_413():
    up, app = _refusing_app(413, {"message": "the prompt is too large for this server"})
    with TestClient(app) as client:
        r = client.post("/v1/chat/completions", json=CHAT_BODY)
    body = openai_error(r, 413)
    assert body["message"] == "the prompt is too large for this server"
    assert body["type"] == "invalid_request_error"
    assert len(up.posts) == 1


def test_an_upstream_400_after_the_stream_started_is_an_error_event_then_done():
    """The proxy cannot check the context length itself (no tokenizer): the upstream's 400
    comes once the stream has begun, as one error event in OpenAI's shape, then [DONE]."""
    up, app = _refusing_app(400, CONTEXT_400)
    with TestClient(app) as client:
        r = client.post("/v1/chat/completions", json={**CHAT_BODY, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    data = [e for e in r.text.split("\n\n") if e.startswith("data: ")]
    assert data[-1] == "data: [DONE]" and len(data) == 2
    error = json.loads(data[0][len("data: ") :])["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["message"] == CONTEXT_400["message"]
    assert error["code"] == "context_length_exceeded"


# ------------------------------------------------ 2. a dead upstream, real server


@pytest.fixture(scope="module")
def dead_upstream_server(pytestconfig: pytest.Config) -> Iterator[ServerProcess]:
    """Its upstream is down, so /health is 503: ready once /health answers at all."""
    log = workdir(pytestconfig) / "bon-dead-upstream.log"
    args = [
        "--upstream",
        f"http://127.0.0.1:{closed_port()}/v1",
        "--upstream-retries",
        "2",
        "--keepalive-interval-s",
        "0.05",
    ]
    with started(ServerProcess(args, log), timeout_s=120, accept=lambda r: True) as proc:
        yield proc


def test_a_dead_upstream_is_a_fast_openai_shaped_503(dead_upstream_server):
    url = dead_upstream_server.base_url
    requests = [
        (
            "/v1/chat/completions",
            {"model": MODEL, "messages": [{"role": "user", "content": Q}], "best_of": 4},
        ),
        ("/v1/completions", {"model": MODEL, "prompt": ["a", "b"], "n": 2}),
    ]
    for path, body in requests:
        start = time.monotonic()
        r = httpx.post(url + path, json=body, timeout=30)
        assert time.monotonic() - start < 5, "a dead upstream must not hang a request"
        error = openai_error(r, 503)
        assert error["type"] == "service_unavailable" and "unreachable" in error["message"]
    assert httpx.get(f"{url}/health", timeout=30).status_code == 503
    assert httpx.get(f"{url}/v1/models", timeout=30).status_code == 200
    text = httpx.get(f"{url}/metrics", timeout=30).text
    assert 'bon_requests_total{endpoint="chat",status="503"} 1.0' in text
    assert 'status="500"' not in text


def test_a_dead_upstream_ends_a_stream_with_an_error_event(dead_upstream_server):
    body = {"model": MODEL, "messages": [{"role": "user", "content": Q}], "stream": True}
    start = time.monotonic()
    with httpx.stream(
        "POST", f"{dead_upstream_server.base_url}/v1/chat/completions", json=body, timeout=30
    ) as r:
        data = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert time.monotonic() - start < 5
    assert data[-1] == "data: [DONE]"
    error = json.loads(data[-2][len("data: ") :])["error"]
    assert error["type"] == "service_unavailable"


# ------------------------------------------------------------ 3. real vLLM servers


@pytest.fixture(scope="module")
def upstreams(pytestconfig) -> dict[str, VLLMServer]:
    return vllm_servers(pytestconfig)


def _bon(args: list[str], name: str, config: pytest.Config) -> Iterator[ServerProcess]:
    args = [*args, "--keepalive-interval-s", "0.05", "--max-best-of", "64"]
    with started(ServerProcess(args, workdir(config) / f"bon-{name}.log")) as proc:
        yield proc


@pytest.fixture(scope="module")
def proxy(upstreams, pytestconfig) -> Iterator[ServerProcess]:
    """bon-server over the policy server, scoring with the remote ORM (names discovered)."""
    orm = upstreams["orm"]
    yield from _bon(
        [
            "--upstream",
            upstreams["policy"].base_url,
            "--verifier",
            str(orm.model),
            "--verifier-url",
            orm.root,
        ],
        "proxy-orm",
        pytestconfig,
    )


@pytest.fixture(scope="module")
def proxy_prm(upstreams, pytestconfig) -> Iterator[ServerProcess]:
    prm = upstreams["prm"]
    yield from _bon(
        [
            "--upstream",
            upstreams["policy"].base_url,
            "--upstream-model",
            MODEL,
            "--verifier",
            str(prm.model),
            "--verifier-kind",
            "prm",
            "--verifier-url",
            prm.base_url,
            "--verifier-model",
            "prm",
        ],
        "proxy-prm",
        pytestconfig,
    )


@pytest.fixture(scope="module")
def client(proxy) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{proxy.base_url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def as_prompt(content: str = Q) -> Prompt:
    return Prompt(messages=(Message("user", content),))


def candidates_of(bon: dict[str, Any]):
    from bon_server.types import Candidate

    return [Candidate(c["text"], (0,), None, c["finish_reason"]) for c in bon["candidates"]]


@pytest.mark.engine
def test_sampling_and_rollouts_through_a_running_vllm_server(upstreams, tmp_path):
    """verifier_training at scale: `sample` and `label-steps` with --upstream send their
    requests to a running vLLM server (the server's proxy client), start no engine here, and
    grade every candidate with the world's checker."""
    from bon_server.tasks import get_task
    from verifier_training.data import labels, sampling
    from verifier_training.data.records import read_labels, read_samples

    url = upstreams["policy"].base_url
    before = upstreams["policy"].metric("vllm:request_success_total")
    out = tmp_path / "samples.jsonl"
    policy = ARITH_POLICY  # a path: rollouts load its chat template
    assert sampling.main(["--policy", policy, "--task", "arith", "--problems", "3",
                          "-k", "4", "--seed", "5", "--out", str(out), "--upstream", url,
                          "--no-progress"]) == 0
    records = read_samples(str(out))
    assert len(records) == 12 and {r.policy for r in records} == {policy}
    task = get_task("arith")
    for r in records:
        assert r.correct == task.check(task.parse(r.question), r.completion)
    assert upstreams["policy"].metric("vllm:request_success_total") - before >= 3
    labelled = tmp_path / "labels.jsonl"
    assert labels.main(["--records", str(out), "--out", str(labelled), "--rollouts", "2",
                        "--max-records", "2", "--upstream", url, "--no-progress"]) == 0
    found = read_labels(str(labelled))
    assert len(found) == 2 and all(len(x.counts) == len(x.steps) > 0 for x in found)


@pytest.mark.engine
def test_proxy_chat_selects_with_the_remote_orm(client, upstreams):
    r = top_three_of_eight(client)
    bon = r.bon
    assert r.model == MODEL
    assert r.choices[0].message.content.strip().splitlines()[-1].startswith("The answer is")
    # usage is the cost of ALL candidates, counted by the upstream's token ids
    assert r.usage.completion_tokens == sum(c["completion_tokens"] for c in bon["candidates"])
    assert r.usage.prompt_tokens == len(Q) + 4  # <|bos|><|user|>...<|end|><|assistant|>


@pytest.mark.engine
def test_remote_orm_scores_equal_the_in_process_orm(client, upstreams):
    from bon_server.scorers.orm import ORMScorer

    r = chat(
        client,
        seed=11,
        max_tokens=96,
        extra_body={"best_of": 6, "selector": "verifier", "return_candidates": True},
    )
    local = ORMScorer.from_pretrained(str(upstreams["orm"].model), device="cpu", dtype="float32")
    expected = asyncio.run(local.score(as_prompt(), candidates_of(r.bon)))
    assert r.bon["verifier_scores"] == pytest.approx(expected, abs=1e-4)


@pytest.mark.engine
def test_proxy_with_the_remote_prm(proxy_prm, upstreams):
    from bon_server.scorers.prm import PRMScorer

    with openai.OpenAI(base_url=f"{proxy_prm.base_url}/v1", api_key="u", max_retries=0) as c:
        r = chat(
            c,
            seed=5,
            max_tokens=128,
            extra_body={
                "best_of": 6,
                "selector": "verifier",
                "prm_aggregation": "prod",
                "return_candidates": True,
            },
        )
    assert r.bon["prm_aggregation"] == "prod"
    local = PRMScorer.from_pretrained(str(upstreams["prm"].model), device="cpu", dtype="float32")
    expected = asyncio.run(local.score(as_prompt(), candidates_of(r.bon), "prod"))
    assert r.bon["verifier_scores"] == pytest.approx(expected, abs=1e-4)
    assert any(s > 0 for s in r.bon["verifier_scores"])


@pytest.mark.engine
@pytest.mark.parametrize("method", ["beam", "particles"])
def test_step_search_through_the_upstream_is_one_request_a_step(proxy_prm, upstreams, method):
    """Step search in proxy mode, the remote PRM scoring each step: every step of an unseeded
    search is ONE upstream /completions request for all its live beams (plus one /tokenize
    to render the chat), and usage counts exactly what the upstream generated."""
    policy = upstreams["policy"]

    def requests(handler: str) -> float:
        try:
            return policy.metric(f'http_requests_total{{handler="{handler}",method="POST",'
                                 'status="2xx"}')
        except KeyError:
            return 0.0

    before = {h: requests(h) for h in ("/v1/completions", "/tokenize", "/v1/chat/completions")}
    tokens = policy.metric("vllm:generation_tokens_total")
    r = httpx.post(f"{proxy_prm.base_url}/v1/chat/completions", timeout=300, json={
        "model": MODEL, "messages": [{"role": "user", "content": Q}], "max_tokens": 96,
        "best_of": 8, "beam_width": 2, "search": method, "selector": "verifier",
        "return_candidates": True})
    assert r.status_code == 200, r.text
    out = r.json()
    search = out["bon"]["search"]
    assert search["mode"] == method and search["steps"] >= 2
    assert requests("/v1/completions") - before["/v1/completions"] == search["steps"]
    assert requests("/tokenize") - before["/tokenize"] <= 1  # the rendered prompt is cached
    assert requests("/v1/chat/completions") == before["/v1/chat/completions"]
    assert out["usage"]["completion_tokens"] == (
        policy.metric("vllm:generation_tokens_total") - tokens)
    assert all(c["steps"] for c in out["bon"]["candidates"])


@pytest.mark.engine
def test_proxy_logprob_selector_needs_and_gets_upstream_logprobs(client):
    logprob_selected(client)
    # asked by the selector only: not returned
    r = chat(client, seed=5, max_tokens=64, extra_body={"best_of": 4, "selector": "logprob"})
    assert r.choices[0].logprobs is None and r.choices[0].score < 0


@pytest.mark.engine
def test_proxy_completions_text_tokens_and_batches(client):
    r = client.completions.create(
        model=MODEL, prompt=rendered(Q), max_tokens=96, best_of=4, n=2, seed=2, logprobs=1
    )
    assert r.object == "text_completion" and [c.index for c in r.choices] == [0, 1]
    assert all(c.text for c in r.choices) and r.bon["best_of"] == 4
    assert r.choices[0].logprobs.tokens and len(r.choices[0].logprobs.top_logprobs[0]) == 1
    r = client.completions.create(
        model=MODEL,
        prompt=[[1, 6, 57], [1, 6, 58]],
        max_tokens=8,
        n=2,
        seed=4,
        extra_body={"best_of": 2},
    )
    assert [c.index for c in r.choices] == [0, 1, 2, 3] and len(r.bon) == 2
    assert r.usage.prompt_tokens == 6


@pytest.mark.engine
def test_proxy_majority_and_seeds(client):
    kwargs = dict(
        seed=1234,
        max_tokens=128,
        extra_body={"best_of": 8, "selector": "majority", "return_candidates": True},
    )
    a, b = chat(client, **kwargs), chat(client, **kwargs)
    assert [c["text"] for c in a.bon["candidates"]] == [c["text"] for c in b.bon["candidates"]]
    answers = [c["answer"] for c in a.bon["candidates"]]
    counted = [x for x in answers if x is not None]
    assert a.choices[0].score == pytest.approx(
        counted.count(max(set(counted), key=counted.count)) / len(answers)
    )


@pytest.mark.engine
def test_proxy_streaming(client):
    kwargs = dict(seed=21, max_tokens=128, extra_body={"best_of": 4})
    full = chat(client, **kwargs)
    chunks = list(chat(client, stream=True, stream_options={"include_usage": True}, **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage == full.usage


@pytest.mark.engine
def test_proxy_passes_upstream_400s_through(client, proxy):
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, "1 + " * 400)
    assert info.value.body["code"] == "context_length_exceeded"
    assert "maximum context length is 512" in info.value.body["message"]
    with pytest.raises(openai.BadRequestError) as info:  # bon cannot know the vocabulary
        client.completions.create(model=MODEL, prompt=[99999], max_tokens=4)
    assert "99999" in info.value.body["message"]
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, max_tokens=100_000)
    assert info.value.body["param"] == "max_tokens"
    # and bon's own checks still come first
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, n=3, extra_body={"best_of": 2})
    assert info.value.body["param"] == "best_of"
    assert 'status="500"' not in httpx.get(f"{proxy.base_url}/metrics").text


@pytest.mark.engine
def test_proxy_disconnect_aborts_the_upstream_request(proxy, upstreams):
    """A client that leaves: the upstream vLLM server (its own metrics, not the proxy's
    bookkeeping) drops every candidate and stops generating, long before the end."""
    policy = upstreams["policy"]
    tokens = policy.metric("vllm:generation_tokens_total")
    sock = send_long_chat(proxy.port)
    try:
        assert wait_for(lambda: proxy.metric("bon_engine_unfinished_requests") == 64)
        assert wait_for(lambda: policy.metric("vllm:num_requests_running") == 64)
        assert wait_for(lambda: policy.metric("vllm:generation_tokens_total") > tokens)
    finally:
        sock.close()
    assert_aborted(
        lambda: policy.metric("vllm:generation_tokens_total"),
        lambda: policy.metric("vllm:num_requests_running")
        + policy.metric("vllm:num_requests_waiting"),
        tokens,
    )
    assert wait_for(lambda: proxy.metric("bon_engine_unfinished_requests") == 0)


@pytest.mark.engine
def test_proxy_pruning_aborts_exactly_the_pruned_upstream_requests(proxy, upstreams):
    """Pruning in proxy mode, seen from the real upstream vLLM server (its own metrics): each
    of 16 candidates of 460 tokens is its own streamed request; after the first step the
    remote ORM ranks them, the proxy closes eight streams, and the upstream runs eight while
    the survivors finish, its token counter ending near what the response reports."""
    policy = upstreams["policy"]
    tokens = policy.metric("vllm:generation_tokens_total")
    out = pruned_long_request(proxy.base_url, lambda: policy.metric("vllm:num_requests_running"))
    assert wait_for(lambda: policy.metric("vllm:num_requests_running") == 0)
    generated = policy.metric("vllm:generation_tokens_total") - tokens
    counted = out["usage"]["completion_tokens"]
    # an upstream notices a closed stream within a few of its steps
    assert counted <= generated <= counted + 8 * 32
    assert generated < 16 * 460


@pytest.mark.engine
def test_a_client_leaving_a_pruned_proxy_request_closes_every_stream(proxy, upstreams):
    """Pruning in proxy mode holds one upstream stream per candidate: a client that hangs up
    while they run (before the first step, or among the survivors) leaves none running."""
    policy = upstreams["policy"]
    running = lambda: policy.metric("vllm:num_requests_running")  # noqa: E731
    tokens = policy.metric("vllm:generation_tokens_total")
    sock = send_long_chat(proxy.port, best_of=16, prune=True, selector="verifier")
    try:
        assert wait_for(lambda: running() > 0)
        assert wait_for(lambda: policy.metric("vllm:generation_tokens_total") > tokens)
    finally:
        sock.close()
    assert_aborted(
        lambda: policy.metric("vllm:generation_tokens_total"),
        lambda: running() + policy.metric("vllm:num_requests_waiting"),
        tokens,
        budget=16 * 460,
    )
    assert wait_for(lambda: proxy.metric("bon_engine_unfinished_requests") == 0)


@pytest.mark.engine
def test_killing_the_remote_verifier_turns_health_and_scoring_into_503(proxy_prm, upstreams):
    """The real PRM server stops: /health says the verifier (not where it was), scoring is a
    503. Near the end of this module: it stops the PRM server (a later user starts one)."""
    health = f"{proxy_prm.base_url}/health"
    assert httpx.get(health, timeout=30).status_code == 200
    prm = upstreams["prm"]
    prm.stop()
    r = httpx.get(health, timeout=30)
    assert r.status_code == 503
    assert r.json() == {"status": "unhealthy", "detail": "the verifier backend is not answering"}
    with (
        openai.OpenAI(base_url=f"{proxy_prm.base_url}/v1", api_key="u", max_retries=0) as c,
        pytest.raises(openai.APIStatusError) as info,
    ):
        chat(c, max_tokens=16, extra_body={"best_of": 2, "selector": "verifier"})
    assert info.value.status_code == 503
    assert info.value.body["type"] == "service_unavailable"
    assert str(prm.port) not in json.dumps(info.value.body)


@pytest.mark.engine
def test_killing_the_upstream_turns_health_and_requests_into_503(proxy, upstreams, client):
    """Last in this module: it stops the policy server (a later user starts a new one)."""
    assert httpx.get(f"{proxy.base_url}/health").status_code == 200
    upstreams["policy"].stop()
    start = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        chat(client, max_tokens=8)
    assert time.monotonic() - start < 10
    assert info.value.status_code == 503
    assert info.value.body["type"] == "service_unavailable"
    assert httpx.get(f"{proxy.base_url}/health").status_code == 503


def test_adaptive_waves_are_separate_upstream_requests():
    """Adaptive sampling in proxy mode: one upstream call per wave, each with its own n and
    seed, and no more calls once the vote is settled."""

    def answering(texts: list[str]) -> Upstream:
        def answer(request: httpx.Request, body: dict[str, Any]) -> dict[str, Any]:
            reply = chat_reply(body["n"])
            for i, choice in enumerate(reply["choices"]):
                choice["message"]["content"] = texts[i % len(texts)]
                choice["finish_reason"] = "stop"
            return reply

        return Upstream(answer)

    body = {"model": MODEL, "messages": [{"role": "user", "content": Q}], "best_of": 16,
            "adaptive": True, "adaptive_wave": 4, "adaptive_min": 4, "seed": 3}
    for texts, waves in ((["The answer is 5."], 1), (["The answer is 5.", "The answer is 6."], 4)):
        up = answering(texts)
        app = create_app(Settings(), generator=generator(up, upstream_model="m"))
        with TestClient(app) as client:
            r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        posts = [b for path, b in up.posts if path.endswith("/chat/completions")]
        assert [b["n"] for b in posts] == [4] * waves
        assert len({b["seed"] for b in posts}) == waves  # every wave its own seed
        assert r.json()["bon"]["search"]["waves"] == waves
        # the prompt as the upstream counted it, once however many waves read it
        assert r.json()["usage"]["prompt_tokens"] == 7
        assert r.json()["usage"]["completion_tokens"] == waves * sum(
            4 if i % 2 == 0 else 3 for i in range(4)
        )
