r"""``--answer-rules math``: answers read and compared as math-verify does, one vote per class.

The rule (the last ``\boxed{}`` first, else the last expression), the classes
``AnswerGroups`` forms with it, and the server voting by them: in-process on the scripted
generator and in proxy mode through the real upstream client over ``httpx.MockTransport``;
majority, weighted majority, adaptive's stopping rule; what is bounded and what falls back.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import httpx
import math_verify
import pytest
from fastapi.testclient import TestClient

from bon_server.answers import (
    ANSWER_RULES,
    DEFAULT_RULES,
    AnswerGroups,
    extract_answer,
    register_rule,
)
from bon_server.app import create_app
from bon_server.config import Settings
from bon_server.generators.fake import ConstantScorer, ScriptedGenerator
from bon_server.generators.upstream import UpstreamGenerator
from bon_server.math_answers import MathAnswer, MathRule
from bon_server.search import Adaptive, should_stop
from bon_server.votes import Votes

HALF = (
    r"The answer is \boxed{\frac{1}{2}}",
    "The answer is 0.5",
    "The answer is 1/2",
)
THREE = ("The answer is 3", "The answer is 3")
FIVE = HALF + THREE  # math-verify: 3 votes for 1/2, 2 for 3; by text, 3 is the only repeat
TEXT_RULES = ("final_line", "boxed")


def keys(texts, rules=("math",), **bounds) -> list[str | None]:
    return AnswerGroups(rules, **bounds).add(list(texts))


# ------------------------------------------------------------------ the rule


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so 2 + 2 = 4, and \boxed{7} then 9", "7"),  # a box beats a later expression
        (r"So \boxed{7}. The final answer is 9", "7"),  # ... and a later "final answer is"
        ("\\boxed{1} at first.\nAt last \\boxed{\\frac{1}{2}}", r"\frac{1}{2}"),  # the last box
        ("first 5, then 1,234", "1234"),  # no box: the last expression
        ("The answer is 0.5", "0.5"),
        ("The answer is 1/2", "1/2"),
        (r"the answer is $\frac{2468}{2}$", r"\frac{2468}{2}"),
    ],
)
def test_the_rule_reads_the_last_box_first_then_the_last_expression(text, expected):
    assert extract_answer(text, ("math",)) == expected


@pytest.mark.parametrize("text", ["", "no numbers here", r"\boxed{"])
def test_no_answer_is_none(text):
    assert extract_answer(text, ("math",)) is None
    assert keys([text]) == [None]


@pytest.mark.parametrize(
    "a, b",
    [
        (r"\boxed{\frac{1}{2}}", "The answer is 0.5"),
        (r"\boxed{\frac{1}{2}}", "The answer is 1/2"),
        ("The answer is 0.5", "The answer is 1/2"),
        ("#### 1,234", "The answer is 1234.0"),
        ("The answer is 1234.0", r"\boxed{\frac{2468}{2}}"),
        ("#### 1,234", r"\boxed{\frac{2468}{2}}"),
        (r"\boxed{x^2+1}", r"\boxed{(x+1)^2 - 2x}"),
    ],
)
def test_answers_math_verify_calls_equal_are_one_vote(a, b):
    first, second = keys([a, b])
    assert first is not None and first == second
    assert math_verify.verify(math_verify.parse(a), math_verify.parse(b))  # as the library says


@pytest.mark.parametrize(
    "a, b",
    [
        (r"\boxed{\frac{1}{2}}", r"\boxed{\frac{1}{3}}"),
        ("The answer is 0.5", "The answer is 5"),
        ("The answer is 1/2", "The answer is 2"),
        ("#### 1,234", "The answer is 1235"),
        (r"\boxed{x^2+1}", r"\boxed{x^2-1}"),
        ("The answer is 3", "The answer is 0.3"),
    ],
)
def test_answers_math_verify_tells_apart_are_two_votes(a, b):
    first, second = keys([a, b])
    assert None not in (first, second) and first != second


@pytest.mark.parametrize(
    "a, b", [(r"\boxed{1 < x < 2}", r"\boxed{(1,2)}"), (r"\boxed{x^2=4}", r"\boxed{\{-2,2\}}")]
)
def test_equality_is_asked_both_ways(a, b):
    gold, target = math_verify.parse(a), math_verify.parse(b)
    assert math_verify.verify(gold, target) and not math_verify.verify(target, gold)
    first, second = keys([a, b])
    assert None not in (first, second) and first != second


def test_classes_take_their_first_members_key_and_later_waves_join_them():
    groups = AnswerGroups(("math",))
    assert groups.add(list(FIVE)) == [r"\frac{1}{2}"] * 3 + ["3"] * 2
    # a later wave (adaptive) joins the classes already there; keys never change
    assert groups.add(["The answer is 2/4", "The answer is 3.0", "The answer is 7"]) == [
        r"\frac{1}{2}", "3", "7",
    ]
    assert not groups.fallbacks


def test_the_text_rules_are_unchanged():
    assert keys(FIVE, TEXT_RULES) == [r"\boxed{\frac{1}{2}}", "0.5", "1/2", "3", "3"]
    for text in [*FIVE, "= 5\nThe answer is 5.", "The answer is 1,000.", r"so \boxed{5.0}"]:
        assert keys([text], DEFAULT_RULES) == [extract_answer(text)]


# ------------------------------------------------------------------ the server votes by it


def test_settings_take_math_and_list_it_among_the_valid_rules():
    assert Settings(answer_rules="math").voting_rules == ("math",)
    with pytest.raises(ValueError, match="valid rules: .*math"):
        Settings(answer_rules="maths")


def candidates_of(response: httpx.Response) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    assert response.status_code == 200, response.text
    body = response.json()
    return body, body["bon"]["candidates"]


def ask(client: TestClient, **body: Any) -> httpx.Response:
    body = {"messages": [{"role": "user", "content": "What is 1/2?"}], **body}
    return client.post("/v1/chat/completions", json={"return_candidates": True, **body})


def in_process(texts=FIVE, scorer=None, **settings: Any) -> TestClient:
    app = create_app(Settings(**settings), generator=ScriptedGenerator(texts), scorer=scorer)
    return TestClient(app)


def assert_math_majority(response: httpx.Response) -> None:
    body, candidates = candidates_of(response)
    assert [c["answer"] for c in candidates] == [r"\frac{1}{2}"] * 3 + ["3"] * 2
    assert body["bon"]["chosen"] == [0]  # the 1/2 class's first member
    assert body["choices"][0]["message"]["content"] == HALF[0]
    assert body["bon"]["scores"] == pytest.approx([0.6] * 3 + [0.4] * 2)


def assert_text_majority(response: httpx.Response) -> None:
    body, candidates = candidates_of(response)
    assert [c["answer"] for c in candidates][3:] == ["3", "3"]
    assert len({c["answer"] for c in candidates}) == 4
    assert body["bon"]["chosen"] == [3]
    assert body["choices"][0]["message"]["content"] == THREE[0]


def test_in_process_majority_votes_by_math_verify_and_by_text_without_it():
    with in_process(answer_rules=("math",)) as client:
        assert_math_majority(ask(client, best_of=5, selector="majority"))
    with in_process(answer_rules=TEXT_RULES) as client:
        assert_text_majority(ask(client, best_of=5, selector="majority"))


def upstream_reply(request: httpx.Request) -> httpx.Response:
    """An OpenAI-compatible upstream answering a chat request with the scripted candidates."""
    if request.url.path.endswith("/models"):
        return httpx.Response(200, json={"object": "list", "data": [{"id": "m"}]})
    body = json.loads(request.content)
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": FIVE[i % len(FIVE)]},
            "finish_reason": "stop",
            "token_ids": [ord(ch) for ch in FIVE[i % len(FIVE)]],
        }
        for i in range(body["n"])
    ]
    tokens = sum(len(c["token_ids"]) for c in choices)
    usage = {"prompt_tokens": 7, "completion_tokens": tokens, "total_tokens": 7 + tokens}
    reply = {"object": "chat.completion", "choices": choices, "usage": usage}
    return httpx.Response(200, json=reply)


def proxy(**settings: Any) -> TestClient:
    settings = Settings(upstream="http://up.test/v1", upstream_model="m", **settings)
    generator = UpstreamGenerator.from_settings(
        settings, transport=httpx.MockTransport(upstream_reply)
    )
    return TestClient(create_app(settings, generator=generator))


def test_proxy_mode_majority_votes_by_math_verify_and_by_text_without_it():
    with proxy(answer_rules=("math",)) as client:
        assert_math_majority(ask(client, best_of=5, selector="majority"))
    with proxy(answer_rules=TEXT_RULES) as client:
        assert_text_majority(ask(client, best_of=5, selector="majority"))


def test_weighted_majority_sums_scores_over_math_classes():
    scores = ConstantScorer((0.3, 0.3, 0.3, 0.4, 0.4))  # 1/2: 0.9 in three; 3: 0.8 in two
    with in_process(scorer=scores, answer_rules=("math",)) as client:
        body, candidates = candidates_of(ask(client, best_of=5, selector="weighted_majority"))
    assert [c["answer"] for c in candidates] == [r"\frac{1}{2}"] * 3 + ["3"] * 2
    assert body["bon"]["chosen"] == [0]
    assert body["bon"]["scores"] == pytest.approx([0.9 / 1.7] * 3 + [0.8 / 1.7] * 2)
    with in_process(scorer=scores, answer_rules=TEXT_RULES) as client:
        body, _ = candidates_of(ask(client, best_of=5, selector="weighted_majority"))
    assert body["bon"]["chosen"] == [3]


def test_adaptives_stopping_rule_counts_the_math_classes():
    params = Adaptive(min_candidates=3, confidence=0.9)  # three of three: 0.94
    assert should_stop("majority", keys(HALF), None, params)
    assert not should_stop("majority", keys(HALF, TEXT_RULES), None, params)
    assert should_stop("weighted_majority", keys(HALF), [0.9, 0.9, 0.9], params)
    assert not should_stop("weighted_majority", keys(HALF, TEXT_RULES), [0.9] * 3, params)


def test_an_adaptive_request_stops_once_the_math_classes_settle():
    body = {"best_of": 12, "adaptive": True, "adaptive_min": 3, "adaptive_wave": 3,
            "adaptive_confidence": 0.9, "selector": "majority"}
    with in_process(HALF, answer_rules=("math",)) as client:
        result, candidates = candidates_of(ask(client, **body))
    assert result["bon"]["search"]["stopped_early"] and len(candidates) == 3
    with in_process(HALF, answer_rules=TEXT_RULES) as client:
        result, candidates = candidates_of(ask(client, **body))
    assert not result["bon"]["search"]["stopped_early"] and len(candidates) == 12


def test_a_pruned_request_votes_by_the_math_classes():
    scores = ConstantScorer((0.5,))
    with in_process(scorer=scores, answer_rules=("math",)) as client:
        body, candidates = candidates_of(
            ask(client, best_of=5, selector="majority", prune=True)
        )
    assert body["bon"]["search"]["mode"] == "prune"
    assert [c["answer"] for c in candidates] == [r"\frac{1}{2}"] * 3 + ["3"] * 2
    assert body["bon"]["chosen"] == [0]


# ------------------------------------------------------------------ bounded, and never raising


BAD = [
    r"The answer is \boxed{9^{9^{9}}}",  # sympy would compute it
    r"\boxed{100000!}",
    r"\boxed{" + "1+" * 500 + "1}",  # past MAX_ANSWER_CHARS
    r"\boxed{\frac{1}{",  # unclosed
    r"\boxed{\frac{}{}}",
    r"\boxed{\left(}",
    "$" * 3000 + r"\(" * 3000,  # adversarial for math-verify's regexes
]


def test_malformed_and_huge_answers_fall_back_to_text_and_are_counted():
    groups = AnswerGroups(("math",))
    got = groups.add(BAD + list(HALF) + ["The answer is 0.5"])
    assert got[len(BAD):] == [r"\frac{1}{2}"] * 4  # the rest still vote by math-verify
    assert got[0] == "9^{9^{9}}" and got[1] == "100000!" and got[2] == "1+" * 500 + "1"
    assert groups.fallbacks["too big"] == 2 and groups.fallbacks["long"] == 1
    # the same huge answer twice is one vote, by its text
    assert keys([BAD[0], BAD[0]]) == ["9^{9^{9}}"] * 2
    # and a request holding them is answered as usual
    with in_process(tuple(BAD) + HALF, answer_rules=("math",)) as client:
        body, candidates = candidates_of(ask(client, best_of=len(BAD) + 3, selector="majority"))
    assert body["bon"]["chosen"] == [len(BAD)]
    assert body["choices"][0]["message"]["content"] == HALF[0]


def test_a_failing_math_verify_never_raises_out_of_the_rule(monkeypatch):
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("sympy fell over")

    monkeypatch.setattr(math_verify, "parse", broken)
    groups = AnswerGroups(("math",))
    assert groups.add([r"so \boxed{\frac{1}{2}}", "it is 0.5", "nothing"]) == [
        r"\frac{1}{2}", "0.5", None,  # the fallback: the last box, else the last number
    ]
    assert groups.fallbacks == {"RuntimeError": 2}


def test_a_failing_comparison_is_not_equal(monkeypatch):
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("sympy fell over")

    monkeypatch.setattr(math_verify, "verify", broken)
    assert keys(HALF) == [r"\frac{1}{2}", "0.5", "1/2"]


def test_comparisons_are_capped_per_candidate_and_per_request():
    # each candidate is compared with at most max_compared classes, the earliest first
    assert keys(["The answer is 1/2", "The answer is 0.5"], max_compared=1) == ["1/2"] * 2
    groups = AnswerGroups(("math",), max_compared=1)
    assert groups.add(["The answer is 3", "The answer is 1/2", "The answer is 0.5"]) == [
        "3", "1/2", "0.5",
    ]
    assert groups.fallbacks == {"max_compared": 1}
    # past the request's budget, answers are read as text (the last box, else number)
    groups = AnswerGroups(("math",), budget_s=0.0)
    assert groups.add(list(HALF)) == [r"\frac{1}{2}", "0.5", "2"]
    assert groups.fallbacks == {"budget": 3}


class SlowToCompare:
    """A pairwise rule where comparing the answer ``slow`` takes a while."""

    def __call__(self, text: str) -> str | None:
        return text

    def read(self, text: str) -> MathAnswer:
        return MathAnswer(text, (text,))

    def same(self, a: MathAnswer, b: MathAnswer) -> bool:
        if b.text == "slow":
            time.sleep(0.2)
        return False

    def fallback(self, text: str) -> str | None:
        return text


def test_the_budget_stops_comparisons_mid_candidate(registered):
    registered("slow-to-compare", SlowToCompare())
    groups = AnswerGroups(("slow-to-compare",), budget_s=0.1)
    assert groups.add(["a", "b", "slow"]) == ["a", "b", "slow"]
    assert groups.fallbacks == {"budget": 1}  # compared with "a" (0.2 s), never with "b"


class Recorded(MathRule):
    """The math rule, noting which threads it runs in (and made slow on demand)."""

    def __init__(self, delay_s: float = 0.0) -> None:
        super().__init__(fallback=ANSWER_RULES["math"].fallback)  # type: ignore[attr-defined]
        self.threads: set[str] = set()
        self.delay_s = delay_s

    def read(self, text: str):  # type: ignore[no-untyped-def]
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay_s)
        return super().read(text)


@pytest.fixture
def registered():
    rules: list[str] = []

    def make(name: str, rule: Any = None, delay_s: float = 0.0) -> Any:
        rule = rule or Recorded(delay_s)
        register_rule(name, rule)
        rules.append(name)
        return rule

    yield make
    for name in rules:
        ANSWER_RULES.pop(name)


def test_grouping_runs_off_the_event_loop(registered):
    rule = registered("math-recorded")
    with in_process(answer_rules=("math-recorded",)) as client:
        assert_math_majority(ask(client, best_of=5, selector="majority"))
    assert rule.threads == {"bon-answers"}


def test_a_request_stops_waiting_for_slow_grouping_and_votes_by_text(registered):
    registered("math-slow", delay_s=0.5)
    votes = Votes(("math-slow",), timeout_s=0.05)

    async def go() -> None:
        await votes.add(list(HALF))
        await votes.add(["The answer is 0.5"])  # the next wave: text at once

    asyncio.run(go())
    assert votes.timed_out
    # the fallback reads the last box, else the last number, as text
    assert votes.answers == [r"\frac{1}{2}", "0.5", "2", "0.5"]
