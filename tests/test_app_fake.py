"""The HTTP surface through TestClient, on the scripted generator and constant scorer."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from bon_server.app import create_app
from bon_server.config import Settings
from bon_server.generators.fake import ConstantScorer, ScriptedGenerator
from bon_server.metrics import Metrics

TEXTS = ("= 5\nThe answer is 5.", "= 6\nThe answer is 6.", "= 5\nThe answer is 5.", "hmm")
SCORES = (0.2, 0.9, 0.6, 0.1)
MESSAGES = [{"role": "user", "content": "What is 2 + 3?"}]
MODEL = "arith-policy"


def serve(*, generator=None, scorer=None, metrics=None, **settings) -> TestClient:
    settings.setdefault("keepalive_interval_s", 5.0)
    app = create_app(
        Settings(**settings),
        generator=generator or ScriptedGenerator(TEXTS),
        scorer=scorer,
        metrics=metrics,
    )
    return TestClient(app)


@pytest.fixture
def client() -> Iterator[TestClient]:
    with serve(scorer=ConstantScorer(SCORES)) as c:
        yield c


def chat(client: TestClient, **body):
    body.setdefault("messages", MESSAGES)
    return client.post("/v1/chat/completions", json=body)


def assert_openai_error(response, status: int, *, param=..., code=...) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if param is not ...:
        assert error["param"] == param
    if code is not ...:
        assert error["code"] == code
    return error


def sse_events(text: str) -> list[str]:
    """Every SSE event of a stream, comments included, in order."""
    return [e for e in text.split("\n\n") if e]


def data_events(text: str) -> list:
    out = []
    for event in sse_events(text):
        if event.startswith("data: "):
            payload = event[len("data: ") :]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


# ------------------------------------------------------------------ chat


def test_chat_happy_path(client):
    r = chat(client, best_of=4, selector="verifier", model=MODEL)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == MODEL
    assert isinstance(body["created"], int)
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["message"] == {"role": "assistant", "content": TEXTS[1], "refusal": None}
    assert choice["finish_reason"] == "stop"
    assert choice["score"] == 0.9
    bon = body["bon"]
    assert bon["best_of"] == 4
    assert bon["selector"] == "verifier"
    assert bon["scores"] == list(SCORES)
    assert bon["verifier_scores"] == list(SCORES)
    assert bon["chosen"] == [1]
    assert bon["candidates"] is None
    usage = body["usage"]
    assert usage["completion_tokens"] == sum(len(t) for t in TEXTS)  # ALL candidates
    assert usage["prompt_tokens"] == len(MESSAGES[0]["content"]) + 2
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_chat_n2_returns_the_two_best_in_order(client):
    body = chat(client, n=2, best_of=4, selector="verifier").json()
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert [c["message"]["content"] for c in body["choices"]] == [TEXTS[1], TEXTS[2]]
    assert [c["score"] for c in body["choices"]] == [0.9, 0.6]
    assert body["bon"]["chosen"] == [1, 2]
    assert body["usage"]["completion_tokens"] == sum(len(t) for t in TEXTS)


def test_chat_default_selector_is_verifier_when_one_is_loaded(client):
    # Settings.default_selector: "None: verifier if loaded, else majority"
    body = chat(client).json()
    assert body["bon"]["selector"] == "verifier"
    assert body["bon"]["best_of"] == 4  # Settings.default_best_of


def test_chat_default_selector_setting():
    with serve(scorer=ConstantScorer(SCORES), default_selector="logprob") as c:
        body = chat(c).json()
    assert body["bon"]["selector"] == "logprob"
    assert body["bon"]["chosen"] == [0]


def test_chat_majority_without_verifier():
    with serve() as c:
        body = chat(c, best_of=4).json()
    assert body["bon"]["selector"] == "majority"
    assert body["bon"]["scores"] == [0.5, 0.25, 0.5, 0.0]
    assert body["bon"]["verifier_scores"] is None
    assert body["choices"][0]["message"]["content"] == TEXTS[0]


def test_chat_return_candidates():
    scores = (0.5, 0.9, 0.6, 0.1)
    with serve(scorer=ConstantScorer(scores)) as c:
        body = chat(c, best_of=4, selector="weighted_majority", return_candidates=True).json()
    candidates = body["bon"]["candidates"]
    assert [c["index"] for c in candidates] == [0, 1, 2, 3]
    assert [c["text"] for c in candidates] == list(TEXTS)
    assert [c["answer"] for c in candidates] == ["5", "6", "5", None]
    assert [c["verifier_score"] for c in candidates] == list(scores)
    assert [c["completion_tokens"] for c in candidates] == [len(t) for t in TEXTS]
    assert [c["finish_reason"] for c in candidates] == ["stop"] * 4
    assert [c["score"] for c in candidates] == body["bon"]["scores"]
    # "5" holds 0.5 + 0.6 of 2.1 and beats the single best-verified "6" (0.9);
    # the group's best-verified member (index 2) represents it
    assert body["bon"]["chosen"] == [2]
    assert body["bon"]["scores"] == pytest.approx([1.1 / 2.1, 0.9 / 2.1, 1.1 / 2.1, 0.0])


def test_chat_logprobs_shape(client):
    body = chat(client, best_of=2, selector="logprob", logprobs=True, top_logprobs=0).json()
    [choice] = body["choices"]
    content = choice["logprobs"]["content"]
    assert "".join(t["token"] for t in content) == choice["message"]["content"]
    assert all(t["top_logprobs"] == [] for t in content)
    assert body["bon"]["chosen"] == [0]


def test_logprob_selector_without_logprobs_requested_returns_none(client):
    body = chat(client, best_of=2, selector="logprob").json()
    assert body["bon"]["selector"] == "logprob"
    assert body["choices"][0]["logprobs"] is None
    r = client.post("/v1/completions", json={"prompt": "x", "best_of": 2, "selector": "logprob"})
    assert r.json()["choices"][0]["logprobs"] is None


def test_chat_max_tokens_truncates_with_length(client):
    body = chat(client, best_of=2, selector="majority", max_tokens=3).json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert len(body["choices"][0]["message"]["content"]) == 3
    assert body["usage"]["completion_tokens"] == 6


# ------------------------------------------------------------------ completions


def test_completions_happy_path(client):
    r = client.post(
        "/v1/completions",
        json={"prompt": "2 + 3 =", "best_of": 4, "n": 2, "selector": "verifier", "max_tokens": 50},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion"
    assert body["id"].startswith("cmpl-")
    assert [c["text"] for c in body["choices"]] == [TEXTS[1], TEXTS[2]]
    assert [c["score"] for c in body["choices"]] == [0.9, 0.6]
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert body["bon"]["chosen"] == [1, 2]
    assert body["usage"]["completion_tokens"] == sum(len(t) for t in TEXTS)
    assert body["usage"]["prompt_tokens"] == len("2 + 3 =")


def test_completions_several_prompts(client):
    r = client.post(
        "/v1/completions",
        json={"prompt": ["ab", "cde"], "best_of": 2, "selector": "verifier", "max_tokens": 50},
    )
    body = r.json()
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert isinstance(body["bon"], list) and len(body["bon"]) == 2
    assert body["usage"]["prompt_tokens"] == 5
    assert body["usage"]["completion_tokens"] == 2 * (len(TEXTS[0]) + len(TEXTS[1]))


def test_completions_echo(client):
    body = client.post(
        "/v1/completions",
        json={
            "prompt": "Q: ",
            "echo": True,
            "best_of": 2,
            "selector": "verifier",
            "max_tokens": 50,
        },
    ).json()
    assert body["choices"][0]["text"] == "Q: " + TEXTS[1]


def test_completions_return_candidates(client):
    body = client.post(
        "/v1/completions",
        json={"prompt": "x", "best_of": 3, "return_candidates": True, "max_tokens": 50},
    ).json()
    assert [c["text"] for c in body["bon"]["candidates"]] == list(TEXTS[:3])


# ------------------------------------------------------------------ streaming


def test_chat_stream(client):
    r = chat(client, stream=True, best_of=4, selector="verifier")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = data_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert all("usage" not in c for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[0]["bon"]["chosen"] == [1]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == TEXTS[1]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_chat_stream_n2_indices(client):
    events = data_events(chat(client, stream=True, n=2, best_of=4, selector="verifier").text)
    texts: dict[int, str] = {}
    for c in events[:-1]:
        for choice in c["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + choice["delta"].get(
                "content", ""
            )
    assert texts == {0: TEXTS[1], 1: TEXTS[2]}


def test_chat_stream_include_usage(client):
    r = chat(
        client,
        stream=True,
        stream_options={"include_usage": True},
        best_of=4,
        selector="verifier",
    )
    events = data_events(r.text)
    assert events[-1] == "[DONE]"
    *content, last = events[:-1]
    assert last["choices"] == []
    assert last["usage"]["completion_tokens"] == sum(len(t) for t in TEXTS)
    assert last["usage"]["total_tokens"] == (
        last["usage"]["prompt_tokens"] + last["usage"]["completion_tokens"]
    )
    assert content
    assert all("usage" in c and c["usage"] is None for c in content)


def test_completions_stream_include_usage(client):
    r = client.post(
        "/v1/completions",
        json={
            "prompt": "x",
            "stream": True,
            "stream_options": {"include_usage": True},
            "best_of": 2,
            "selector": "verifier",
            "max_tokens": 50,
        },
    )
    events = data_events(r.text)
    assert events[-1] == "[DONE]"
    *content, last = events[:-1]
    assert all(c["object"] == "text_completion" for c in events[:-1])
    assert "".join(c["choices"][0]["text"] for c in content) == TEXTS[1]
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == len(TEXTS[0]) + len(
        TEXTS[1]
    )
    assert all(c["usage"] is None for c in content)


def test_stream_keepalive_while_generating():
    gen = ScriptedGenerator(TEXTS, delay_s=0.3)
    with serve(generator=gen, keepalive_interval_s=0.01) as c:
        r = chat(c, stream=True, best_of=2)
    events = sse_events(r.text)
    assert events[0] == ": keep-alive"
    first_data = next(i for i, e in enumerate(events) if e.startswith("data: "))
    assert all(e == ": keep-alive" for e in events[:first_data])
    assert ": keep-alive" not in events[first_data:]
    assert events[-1] == "data: [DONE]"


def test_stream_generator_failure_is_an_error_event_then_done():
    gen = ScriptedGenerator(TEXTS, fail_with=RuntimeError("engine exploded"))
    with serve(generator=gen) as c:
        r = chat(c, stream=True)
    assert r.status_code == 200
    events = data_events(r.text)
    assert events[-1] == "[DONE]"
    assert len(events) == 2
    error = events[0]["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "internal_error"
    assert "engine exploded" not in error["message"]  # internals are not leaked


def test_stream_scorer_failure_is_a_503_error_event():
    with serve(scorer=ConstantScorer(fail_with=RuntimeError("oom"))) as c:
        r = chat(c, stream=True, selector="verifier")
    events = data_events(r.text)
    assert events[-1] == "[DONE]"
    assert events[0]["error"]["type"] == "service_unavailable"


# ------------------------------------------------------------------ errors


def test_malformed_json_is_400(client):
    r = client.post(
        "/v1/chat/completions",
        content=b'{"messages": [',
        headers={"content-type": "application/json"},
    )
    error = assert_openai_error(r, 400)
    assert error["type"] == "invalid_request_error"


def test_missing_messages_is_400(client):
    error = assert_openai_error(client.post("/v1/chat/completions", json={}), 400)
    assert error["param"] == "messages"
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize("content", [b"", b"[]", b'"hello"'])
def test_body_that_is_not_an_object_is_400_with_a_readable_message(client, content):
    r = client.post(
        "/v1/chat/completions", content=content, headers={"content-type": "application/json"}
    )
    error = assert_openai_error(r, 400, param=None)
    assert "'None'" not in error["message"]


def test_invalid_value_is_400_with_param(client):
    error = assert_openai_error(chat(client, temperature=5), 400, param="temperature")
    assert "temperature" in error["message"]


# Found by schemathesis; OpenAI's API types these strictly and answers a wrong JSON type with
# a 400 ("Invalid type for 'temperature': expected a decimal, but got a string instead").
@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"messages": MESSAGES, "temperature": "1"}, "temperature"),
        ("/v1/completions", {"prompt": "x", "temperature": "1"}, "temperature"),
        ("/v1/completions", {"prompt": "x", "logprobs": False}, "logprobs"),
        ("/v1/completions", {"prompt": "x", "logprobs": True}, "logprobs"),
        ("/v1/chat/completions", {"messages": MESSAGES, "logprobs": 1}, "logprobs"),
    ],
)
def test_a_value_of_the_wrong_json_type_is_400_not_coerced(client, path, body, param):
    error = assert_openai_error(client.post(path, json=body), 400, param=param)
    assert error["type"] == "invalid_request_error"


# Found by schemathesis: JSON Schema (and so this server's OpenAPI document) counts 2.0 as an
# integer, and a Python client's json.dumps writes a float-typed count that way.
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"messages": MESSAGES, "n": 2.0, "best_of": 4.0, "seed": 7.0,
                                  "max_tokens": 8.0, "top_k": 5.0}),
        ("/v1/completions", {"prompt": "x", "logprobs": 2.0, "max_tokens": 8.0}),
    ],
)
def test_an_integral_float_is_an_integer(client, path, body):
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    assert len(response.json()["choices"]) == int(body.get("n", 1))


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"n": 2.5}, "n"),
        ({"seed": 1.5}, "seed"),
        ({"seed": 2**63}, "seed"),  # beyond a 64-bit seed: refused before the engine
        ({"seed": 1e300}, "seed"),
        ({"max_tokens": True}, "max_tokens"),
    ],
)
def test_a_non_integral_or_out_of_range_count_is_400(client, body, param):
    assert_openai_error(chat(client, **body), 400, param=param)


@pytest.mark.parametrize(
    ("path", "body", "with_logprobs"),
    [
        ("/v1/chat/completions", {"messages": MESSAGES, "temperature": 1}, False),  # an integer
        ("/v1/chat/completions", {"messages": MESSAGES, "logprobs": False}, False),  # boolean
        ("/v1/completions", {"prompt": "x", "logprobs": 0}, True),  # an integer here
        ("/v1/completions", {"prompt": "x", "logprobs": None}, False),
    ],
)
def test_the_right_json_types_for_the_same_fields_are_accepted(client, path, body, with_logprobs):
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    assert (r.json()["choices"][0]["logprobs"] is not None) is with_logprobs


def test_unknown_model_is_404(client):
    error = assert_openai_error(chat(client, model="gpt-9"), 404, code="model_not_found")
    assert error["param"] == "model"
    assert "gpt-9" in error["message"]


def test_unknown_selector_is_400(client):
    error = assert_openai_error(chat(client, selector="oracle"), 400, param="selector")
    for name in ("verifier", "weighted_majority", "majority", "logprob"):
        assert name in error["message"]


def test_best_of_below_n_is_400(client):
    assert_openai_error(chat(client, n=3, best_of=2), 400, param="best_of")
    r = client.post("/v1/completions", json={"prompt": "x", "n": 3, "best_of": 2})
    assert_openai_error(r, 400, param="best_of")


def test_best_of_above_server_limit_is_400():
    with serve(max_best_of=4) as c:
        assert_openai_error(chat(c, best_of=5), 400, param="best_of")


def test_verifier_selector_without_verifier_is_400():
    with serve() as c:
        for selector in ("verifier", "weighted_majority"):
            error = assert_openai_error(chat(c, selector=selector), 400, param="selector")
            assert "verifier" in error["message"]


def test_image_content_is_400(client):
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}]
    assert_openai_error(chat(client, messages=messages), 400, param="messages.0.content")


@pytest.mark.parametrize("stream", [False, True])
def test_prompt_too_long_is_plain_400(stream):
    with serve(generator=ScriptedGenerator(TEXTS, max_model_len=16)) as c:
        r = chat(c, stream=stream, messages=[{"role": "user", "content": "x" * 100}])
    assert_openai_error(r, 400)
    assert "data:" not in r.text


def test_stream_options_without_stream_is_400(client):
    r = chat(client, stream_options={"include_usage": True})
    assert_openai_error(r, 400, param="stream_options")


def test_unknown_url_is_404(client):
    error = assert_openai_error(client.get("/v1/nope"), 404)
    assert "/v1/nope" in error["message"]


def test_wrong_method_is_405(client):
    error = assert_openai_error(client.get("/v1/chat/completions"), 405)
    assert error["type"] == "invalid_request_error"


def test_scorer_failure_is_503():
    with serve(scorer=ConstantScorer(fail_with=RuntimeError("oom"))) as c:
        error = assert_openai_error(chat(c, selector="verifier"), 503)
        assert error["type"] == "service_unavailable"
        # a request that needs no verifier still works
        assert chat(c, selector="majority").status_code == 200


def test_generator_failure_is_500_in_openai_shape():
    gen = ScriptedGenerator(TEXTS, fail_with=RuntimeError("engine exploded"))
    app = create_app(Settings(), generator=gen)
    with TestClient(app, raise_server_exceptions=False) as c:
        error = assert_openai_error(chat(c), 500)
    assert error["type"] == "internal_error"
    assert "engine exploded" not in error["message"]


def test_server_error_is_counted_as_500_not_as_a_disconnect():
    metrics = Metrics()
    gen = ScriptedGenerator(TEXTS, fail_with=RuntimeError("engine exploded"))
    app = create_app(Settings(), generator=gen, metrics=metrics)
    with TestClient(app, raise_server_exceptions=False) as c:
        assert chat(c).status_code == 500
    labels = {"endpoint": "chat", "status": "500"}
    assert metrics.registry.get_sample_value("bon_requests_total", labels) == 1.0
    disconnect = {"endpoint": "chat", "status": "499"}
    assert metrics.registry.get_sample_value("bon_requests_total", disconnect) is None


# ------------------------------------------------------------------ models, health, metrics


def test_models_lists_the_served_name(client):
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == [MODEL]
    assert body["data"][0]["object"] == "model"
    assert client.get(f"/v1/models/{MODEL}").json()["id"] == MODEL
    assert_openai_error(client.get("/v1/models/other"), 404, code="model_not_found")


def test_served_model_name():
    with serve(served_model_name="my-bon") as c:
        assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ["my-bon"]
        assert chat(c, model="my-bon").json()["model"] == "my-bon"
        assert chat(c, model=MODEL).status_code == 404


def test_health(client):
    r = client.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


class _Unreachable(ScriptedGenerator):
    async def check_health(self) -> None:
        raise ConnectionError("http://admin:hunter2@10.0.0.7:8000/v1 refused the connection")


def test_unhealthy_backend_is_503_without_its_address_or_credentials(caplog):
    with serve(generator=_Unreachable(TEXTS)) as c, caplog.at_level("WARNING"):
        r = c.get("/health")
    assert r.status_code == 503
    assert r.json() == {"status": "unhealthy", "detail": "the policy backend is not answering"}
    assert "10.0.0.7" not in r.text and "hunter2" not in r.text
    assert any("10.0.0.7" in rec.getMessage() for rec in caplog.records)  # the log has it


def test_metrics_endpoint():
    metrics = Metrics()
    with serve(scorer=ConstantScorer(SCORES), metrics=metrics) as c:
        assert chat(c, best_of=4, selector="verifier").status_code == 200
        assert chat(c, stream=True, best_of=2, selector="verifier").status_code == 200
        assert chat(c, selector="oracle").status_code == 400
        r = c.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    for name in (
        "bon_requests_in_flight",
        "bon_request_duration_seconds",
        "bon_candidates_generated_total",
        "bon_completion_tokens_total",
        "bon_scoring_duration_seconds",
    ):
        assert f"# TYPE {name}" in text
    assert "bon_requests_in_flight 0.0" in text.splitlines()
    value = metrics.registry.get_sample_value
    assert value("bon_requests_in_flight") == 0
    assert value("bon_candidates_generated_total", {"selector": "verifier"}) == 6
    assert value("bon_completion_tokens_total") == sum(len(t) for t in TEXTS) + len(TEXTS[0]) + len(
        TEXTS[1]
    )
    assert value("bon_scoring_duration_seconds_count") == 2
    ok = {"endpoint": "chat", "status": "200"}
    assert value("bon_requests_total", ok) == 2
    assert value("bon_request_duration_seconds_count", ok) == 2
    assert value("bon_requests_total", {"endpoint": "chat", "status": "400"}) == 1
