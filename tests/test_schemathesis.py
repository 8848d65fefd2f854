"""Property-based tests of the HTTP API against the server's own OpenAPI document.

schemathesis reads ``/openapi.json`` and sends schema-valid and schema-violating
requests to every operation. Every response must be a non-5xx whose status,
content type, headers and body match the document. The one check left out is
``positive_data_acceptance``: the schema cannot say everything the server
refuses with a 400 (``best_of >= n``, the served model's name, its context
window), so a schema-valid request may still be rightly refused.

Bounded and deterministic: a fixed number of examples, derandomized, no example
database. Three targets: the app on the scripted generator, the same with API
keys (schemathesis also checks that a request without the key is refused), and
a few examples against the real engine.
"""

from __future__ import annotations

import collections

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance

from bon_server.app import create_app
from bon_server.config import Settings
from bon_server.generators.fake import ConstantScorer, ScriptedGenerator

KEY = "sk-schemathesis"
TEXTS = ("12 + 3 = 15\nThe answer is 15.", "The answer is 16.", "hmm")
EXCLUDED = [positive_data_acceptance]
BOUNDED = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def fake_app(**overrides):
    return create_app(
        Settings(keepalive_interval_s=0.01, max_best_of=16, **overrides),
        generator=ScriptedGenerator(TEXTS),
        scorer=ConstantScorer((0.2, 0.9, 0.5)),
    )


open_schema = schemathesis.openapi.from_asgi("/openapi.json", fake_app())
keyed_schema = schemathesis.openapi.from_asgi(
    "/openapi.json", fake_app(api_keys=(KEY,)), headers={"Authorization": f"Bearer {KEY}"}
)


@open_schema.parametrize()
@BOUNDED
def test_api_matches_its_schema(case):
    case.call_and_validate(excluded_checks=EXCLUDED)


@keyed_schema.parametrize()
@BOUNDED
def test_api_with_keys_matches_its_schema(case):
    case.call_and_validate(headers={"Authorization": f"Bearer {KEY}"}, excluded_checks=EXCLUDED)


def answerable(case):
    """Most generated prompts are refused before the engine (a 'tool' role, an empty prompt,
    tools, which this server refuses by design): give a chat or completions body a real
    question and no tools, so that the random sampling fields reach vLLM. Bodies that are not
    objects stay as generated."""
    if isinstance(case.body, dict):
        if "messages" in case.body:
            case.body["messages"] = [{"role": "user", "content": "What is 2 + 3?"}]
        if "prompt" in case.body:
            case.body["prompt"] = "<|bos|><|user|>What is 2 + 3?<|end|><|assistant|>"
        for field in ("model", "tools", "tool_choice"):
            case.body.pop(field, None)
    return case


def fuzz(schema, max_examples: int, **call) -> collections.Counter:
    """Every operation, ``max_examples`` answerable cases each; returns (operation, status)
    counts. (schemathesis' ``from_fixture`` does not run under this pytest, so the strategies
    are driven by hand.)"""
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 7
    statuses: collections.Counter[tuple[str, int]] = collections.Counter()
    for operation in operations:

        @given(case=operation.as_strategy().map(answerable))
        @settings(BOUNDED, max_examples=max_examples)
        def check(case):
            response = case.call_and_validate(excluded_checks=EXCLUDED, **call)
            statuses[case.operation.label, response.status_code] += 1

        check()
    return statuses


def test_answerable_requests_match_the_schema():
    # How many of a run's generated bodies are answerable varies between processes, with the
    # tests that ran before (a CI run once got 6 chat 200s of 40 where this file alone gets
    # 23, and no seed reproduces it here): the counts are printed, and the bar is low.
    statuses = fuzz(open_schema, 60)
    print("schemathesis on the scripted app:", dict(statuses))
    assert statuses["POST /v1/chat/completions", 200] >= 8
    assert statuses["POST /v1/completions", 200] >= 8
    assert all(status < 500 for _, status in statuses)


@pytest.mark.engine
def test_engine_api_matches_its_schema(server):
    """The random sampling fields (temperature, top_k, min_p, penalties, seed, logit_bias,
    stop, n, best_of, logprobs...) reach the real engine; none may make it fail."""
    schema = schemathesis.openapi.from_url(f"{server.base_url}/openapi.json")
    statuses = fuzz(schema, 25, timeout=120)
    print("schemathesis on the engine:", dict(statuses))
    assert statuses["POST /v1/chat/completions", 200] >= 5
    assert statuses["POST /v1/completions", 200] >= 5
    assert all(status < 500 for _, status in statuses)
