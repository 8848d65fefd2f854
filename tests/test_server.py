"""End-to-end: the official openai SDK against the real server on the real vLLM engine."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from conftest import (
    MODEL,
    Q,
    assert_aborted,
    chat,
    logprob_selected,
    rendered,
    send_long_chat,
    top_three_of_eight,
    wait_for,
)

from bon_server.answers import extract_answer
from bon_server.tasks.arith import sample_problems

pytestmark = pytest.mark.engine


# ------------------------------------------------------------------ happy paths


def test_models_lists_the_served_model(client):
    ids = [m.id for m in client.models.list().data]
    assert ids == [MODEL]


def test_chat_answers_in_the_arith_format(client):
    r = chat(client, seed=1, max_tokens=128, extra_body={"best_of": 4, "selector": "majority"})
    assert r.object == "chat.completion"
    assert r.model == MODEL
    (choice,) = r.choices
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    assert choice.message.content.strip().splitlines()[-1].startswith("The answer is ")
    assert r.bon["best_of"] == 4 and r.bon["selector"] == "majority"


def test_best_of_with_n_returns_the_top_n_by_score(client):
    r = top_three_of_eight(client)
    bon = r.bon
    for rank, choice in enumerate(r.choices):
        assert choice.score == pytest.approx(bon["candidates"][bon["chosen"][rank]]["score"])
    scores = [c.score for c in r.choices]
    assert scores == sorted(scores, reverse=True)
    # the usage is the real cost: the tokens of ALL candidates
    assert r.usage.completion_tokens == sum(c["completion_tokens"] for c in bon["candidates"])
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_majority_picks_the_most_common_answer(client):
    r = chat(
        client,
        seed=3,
        max_tokens=128,
        extra_body={"best_of": 16, "selector": "majority", "return_candidates": True},
    )
    answers = [c["answer"] for c in r.bon["candidates"]]
    counted = [a for a in answers if a is not None]
    top = max(set(counted), key=counted.count)
    assert extract_answer(r.choices[0].message.content) == top
    assert r.choices[0].score == pytest.approx(counted.count(top) / len(answers))


def test_logprob_selector_and_returned_logprobs(client):
    logprob_selected(client)


def test_logprob_score_is_the_mean_over_the_generated_tokens(client):
    """As documented: the mean log-probability of every generated token. Cut at max_tokens
    (no EOS), that is the mean of the returned token logprobs; ended by the EOS, the EOS
    counts too (it is a generated token, though not part of the text)."""
    seen = {}
    for max_tokens in (16, 128):
        r = chat(
            client,
            n=4,
            seed=5,
            max_tokens=max_tokens,
            logprobs=True,
            extra_body={"best_of": 4, "selector": "logprob", "return_candidates": True},
        )
        for choice in r.choices:
            logprobs = [t.logprob for t in choice.logprobs.content]
            cand = next(c for c in r.bon["candidates"] if c["text"] == choice.message.content)
            if choice.finish_reason == "length":
                assert cand["completion_tokens"] == len(logprobs) == max_tokens
                assert choice.score == pytest.approx(sum(logprobs) / len(logprobs), abs=1e-9)
            else:
                assert cand["completion_tokens"] == len(logprobs) + 1
                eos = choice.score * (len(logprobs) + 1) - sum(logprobs)
                assert -30 < eos <= 0  # the EOS's own log-probability
        assert [c.score for c in r.choices] == sorted((c.score for c in r.choices), reverse=True)
        seen[max_tokens] = {c.finish_reason for c in r.choices}
    assert seen == {16: {"length"}, 128: {"stop"}}  # both cases were checked


def test_completions_endpoint_with_rendered_prompt(client):
    r = client.completions.create(
        model=MODEL, prompt=rendered(Q), max_tokens=128, best_of=4, n=2, seed=2
    )
    assert r.object == "text_completion"
    assert [c.index for c in r.choices] == [0, 1]
    assert all(c.text for c in r.choices)
    assert r.bon["best_of"] == 4


def test_completions_batch_of_prompts(client):
    prompts = [rendered("What is 2 + 3?"), rendered("What is 4 * 5?")]
    r = client.completions.create(
        model=MODEL, prompt=prompts, max_tokens=64, n=2, seed=4, extra_body={"best_of": 2}
    )
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert isinstance(r.bon, list) and len(r.bon) == 2


def test_system_and_multi_turn_messages(client):
    messages = [
        {"role": "system", "content": "You are a careful calculator."},
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": "= 5\nThe answer is 5."},
        {"role": "user", "content": [{"type": "text", "text": "What is 6 * 7?"}]},
    ]
    r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=64, seed=0)
    assert r.choices[0].finish_reason in ("stop", "length")
    # the policy's template, written out: every turn is rendered, one token per character and
    # per <|tag|> (the tokenizer is character-level)
    text = (
        "<|bos|><|system|>You are a careful calculator.<|end|><|user|>What is 2 + 3?<|end|>"
        "<|assistant|>= 5\nThe answer is 5.<|end|><|user|>What is 6 * 7?<|end|><|assistant|>"
    )
    same = client.completions.create(model=MODEL, prompt=text, max_tokens=1)
    # <|bos|>, then <|role|> + characters + <|end|> per turn, then <|assistant|>
    assert r.usage.prompt_tokens == same.usage.prompt_tokens == 1 + 31 + 16 + 22 + 16 + 1


def test_seed_makes_requests_reproducible(client):
    kwargs = dict(seed=1234, max_tokens=128, extra_body={"best_of": 4, "return_candidates": True})
    a, b = chat(client, **kwargs), chat(client, **kwargs)
    assert [c["text"] for c in a.bon["candidates"]] == [c["text"] for c in b.bon["candidates"]]
    assert a.bon["scores"] == pytest.approx(b.bon["scores"])
    c = chat(client, **{**kwargs, "seed": 4321})
    assert [x["text"] for x in c.bon["candidates"]] != [x["text"] for x in a.bon["candidates"]]


def test_stop_sequence_ends_candidates(client):
    r = chat(
        client,
        stop=["\n"],
        seed=9,
        max_tokens=128,
        extra_body={"best_of": 4, "return_candidates": True},
    )
    for cand in r.bon["candidates"]:
        assert "\n" not in cand["text"]
        assert cand["finish_reason"] == "stop"


def test_max_tokens_reached_is_length(client):
    r = chat(client, max_tokens=3, seed=1, extra_body={"best_of": 4, "return_candidates": True})
    assert r.choices[0].finish_reason == "length"
    assert all(c["completion_tokens"] == 3 for c in r.bon["candidates"])
    assert r.usage.completion_tokens == 12


def test_majority_beats_a_single_sample_on_the_same_problems(client):
    """The shipped policy is a real model, and self-consistency helps it. On 24 seeded
    four-operand problems (the hardest it is trained on), majority over 8 gets more right
    than best_of=1 does on the same problems, best_of=1's accuracy measured on the very 8
    samples majority chose from (each is a best_of=1 answer; their mean is its expectation)."""
    problems = [p for p in sample_problems(200, seed=99) if len(p.operands) == 4][:24]
    majority = single = 0.0
    for p in problems:
        r = chat(
            client,
            p.question,
            seed=11,
            max_tokens=128,
            extra_body={"best_of": 8, "selector": "majority", "return_candidates": True},
        )
        majority += extract_answer(r.choices[0].message.content) == str(p.answer)
        single += sum(c["answer"] == str(p.answer) for c in r.bon["candidates"]) / 8
    assert single >= 2, single  # the policy does solve some (measured: 6.4 of 24)
    assert majority >= single + 1, (majority, single)  # measured: 9 against 6.4


# -------------------------------------------------------------------- streaming


def test_stream_matches_non_stream(client):
    kwargs = dict(seed=21, max_tokens=128, extra_body={"best_of": 4})
    full = chat(client, **kwargs)
    stream = chat(client, stream=True, **kwargs)
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == full.choices[0].finish_reason
    assert all(c.usage is None for c in chunks)


def test_stream_with_usage_and_n(client):
    stream = chat(
        client,
        stream=True,
        n=2,
        seed=22,
        max_tokens=64,
        stream_options={"include_usage": True},
        extra_body={"best_of": 4},
    )
    chunks = list(stream)
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])
    finished = {c.choices[0].index for c in chunks[:-1] if c.choices[0].finish_reason}
    assert finished == {0, 1}


def test_stream_sends_keepalives_then_done(server):
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": Q}],
        "stream": True,
        "best_of": 32,
        "max_tokens": 256,
        "ignore_eos": True,
    }
    with httpx.stream(
        "POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=120
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[0] == ": keep-alive"
    data = [line for line in lines if line.startswith("data: ")]
    assert data[-1] == "data: [DONE]"
    first = json.loads(data[0][len("data: ") :])
    assert first["bon"]["best_of"] == 32


def test_completions_stream(client):
    stream = client.completions.create(
        model=MODEL, prompt=rendered(Q), max_tokens=64, stream=True, seed=3
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


# ----------------------------------------------------------------------- errors


def test_errors_are_openai_shaped(client, server):
    cases = [
        (dict(extra_body={"best_of": 2}, n=3), 400, "best_of"),
        (dict(extra_body={"selector": "nope"}), 400, "selector"),
        (dict(temperature=5), 400, "temperature"),
        (dict(max_tokens=100_000), 400, "max_tokens"),
        (dict(extra_body={"best_of": 65}), 400, "best_of"),
        (dict(stop=["a", "b", "c", "d", "e"]), 400, "stop"),
    ]
    for kwargs, status, param in cases:
        with pytest.raises(openai.APIStatusError) as info:
            chat(client, **kwargs)
        assert info.value.status_code == status, kwargs
        err = info.value.body
        assert set(err) >= {"message", "type", "param", "code"}, err
        assert err["param"] == param, err
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": Q}])
    assert info.value.body["code"] == "model_not_found"


def test_unknown_selector_lists_valid_ones(client):
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, extra_body={"selector": "best"})
    message = info.value.body["message"]
    for name in ("verifier", "weighted_majority", "majority", "logprob"):
        assert name in message


def test_malformed_json_and_long_prompt_are_400(server):
    url = f"{server.base_url}/v1/chat/completions"
    r = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    long = {"model": MODEL, "messages": [{"role": "user", "content": "1 + " * 400}], "stream": True}
    r = httpx.post(url, json=long, timeout=30)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"
    r = httpx.post(url, json={"model": MODEL}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


def test_unknown_fields_are_ignored(server):
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": Q}],
        "max_tokens": 16,
        "frobnicate": {"x": 1},
        "metadata": {"a": "b"},
    }
    r = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text


# ---------------------------------------------------------------------- metrics


def test_metrics_count_all_candidates(server, client):
    before = server.metric("bon_completion_tokens_total")
    engine_before = server.metric("vllm:generation_tokens_total")
    r = chat(client, max_tokens=8, seed=1, extra_body={"best_of": 4})
    after = server.metric("bon_completion_tokens_total")
    assert after - before == r.usage.completion_tokens
    # vLLM's own counter, served beside ours, agrees: every candidate's tokens were counted
    assert wait_for(
        lambda: server.metric("vllm:generation_tokens_total") - engine_before
        == r.usage.completion_tokens,
        5,
    )
    text = httpx.get(f"{server.base_url}/metrics").text
    for name in (
        "bon_request_duration_seconds_bucket",
        "bon_requests_in_flight",
        "bon_candidates_generated_total",
        "bon_scoring_duration_seconds_count",
    ):
        assert name in text
    assert server.metric("bon_requests_in_flight") == 0


def test_a_best_of_request_prefills_its_prompt_once(server, client):
    """On CPU the server picks 32-token KV blocks (vLLM's 128 is longer than these prompts, and
    only whole blocks are cached): the candidates after the first find the prompt's full blocks
    in the prefix cache, read from vLLM's own counters."""
    question = "What is 31 + 58 * 2 - 77 + 40 - 9 * 3?"  # asked by no other test: not cached
    hits = server.metric("vllm:prefix_cache_hits_total")
    queries = server.metric("vllm:prefix_cache_queries_total")
    r = chat(client, content=question, max_tokens=8, seed=3, extra_body={"best_of": 16})
    hits = server.metric("vllm:prefix_cache_hits_total") - hits
    queries = server.metric("vllm:prefix_cache_queries_total") - queries
    prompt_tokens = r.usage.prompt_tokens
    assert prompt_tokens >= 32  # at least one whole block
    assert queries == 16 * prompt_tokens  # every candidate looked its prompt up
    # and all but the first found its whole blocks (with 128-token blocks: none)
    assert hits >= 15 * (prompt_tokens // 32 * 32)


@pytest.mark.parametrize("stream", [False, True])
def test_disconnect_aborts_every_candidate(server, stream):
    """A client that goes away mid-generation: the engine drops all of its candidates at once
    and stops generating for them, long before the request could have ended by itself."""
    disconnects = server.metric("bon_client_disconnects_total")
    tokens = server.metric("vllm:generation_tokens_total")
    sock = send_long_chat(server.port, stream=stream)
    try:
        assert wait_for(lambda: server.metric("bon_engine_unfinished_requests") == 64)
        assert wait_for(lambda: server.metric("vllm:generation_tokens_total") > tokens)
    finally:
        sock.close()  # mid-generation
    assert_aborted(
        lambda: server.metric("vllm:generation_tokens_total"),
        lambda: server.metric("bon_engine_unfinished_requests"),
        tokens,
    )
    assert wait_for(lambda: server.metric("bon_requests_in_flight") == 0)
    assert wait_for(lambda: server.metric("bon_client_disconnects_total") == disconnects + 1)


def test_concurrent_seeded_requests_keep_the_engine_alive(server):
    """Many seeded requests at once overflow one step's token budget. With chunked prefill,
    vLLM's CPU sampler dies on the split prefill of a seeded request; the server must not."""
    import concurrent.futures

    system = "You are a careful calculator who checks every step twice. " * 4
    url = f"{server.base_url}/v1/chat/completions"

    def one(i: int) -> int:
        body = {
            "model": MODEL,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": Q}],
            "best_of": 32,
            "max_tokens": 8,
            "seed": i,
        }
        return httpx.post(url, json=body, timeout=300).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(one, range(8)))
    assert statuses == [200] * 8
    assert httpx.get(f"{server.base_url}/health").status_code == 200
