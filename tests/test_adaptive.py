"""Adaptive sampling: the stopping rules on scripted candidate streams, the waves through the
pipeline and the API, and on the real engine (usage adds up; a disconnect mid-wave aborts
everything and starts no further wave)."""

from __future__ import annotations

import math

import httpx
import pytest
from asgi_app import app_with, chat_body, openai_error, running, sample, scenario
from conftest import LONG_REQUEST, Q, assert_aborted, send_long_chat, wait_for

from bon_server.config import Settings
from bon_server.generators.fake import ConstantScorer, ScriptedGenerator
from bon_server.metrics import Metrics
from bon_server.pipeline import WAVE_SEED_STRIDE
from bon_server.search import Adaptive, beta_confidence, should_stop, wave_sizes

FIVE = "= 5\nThe answer is 5."
SIX = "= 6\nThe answer is 6."

# ---------------------------------------------------------------------- the rules


def exact(leader: int, runner_up: int) -> float:
    """P(X > 1/2), X ~ Beta(a, b) with whole a, b: P(Binomial(a + b - 1, 1/2) <= a - 1)."""
    a, b = leader + 1, runner_up + 1
    m = a + b - 1
    return sum(math.comb(m, k) for k in range(a)) / 2**m


@pytest.mark.parametrize("leader, runner_up", [(4, 0), (3, 1), (6, 2), (7, 1), (10, 6), (0, 0)])
def test_beta_confidence_is_the_exact_posterior(leader, runner_up):
    assert beta_confidence(leader, runner_up) == pytest.approx(exact(leader, runner_up), abs=1e-6)


def test_beta_confidence_takes_fractional_votes_monotonically():
    values = [beta_confidence(x, 1.3) for x in (1.3, 2.0, 2.7, 4.1, 8.9)]
    assert values[0] == pytest.approx(0.5, abs=1e-6) and values == sorted(values)


P = Adaptive(wave=4, min_candidates=4, confidence=0.95, threshold=0.9)


def test_majority_settles_on_a_unanimous_first_wave_and_not_on_a_split_one():
    assert should_stop("majority", ["5"] * 4, None, P)  # 1 - 1/32 = 0.97
    assert not should_stop("majority", ["5", "5", "5", "6"], None, P)  # 0.81
    assert not should_stop("majority", ["5"] * 6 + ["6"] * 2, None, P)  # 0.91
    assert should_stop("majority", ["5"] * 7 + ["6"], None, P)  # 0.98
    # no answer is no vote: four blanks settle nothing
    assert not should_stop("majority", [None] * 4, None, P)
    assert should_stop("majority", ["5"] * 4 + [None] * 4, None, P)


def test_no_rule_stops_before_its_minimum():
    late = Adaptive(min_candidates=8)
    for n in range(1, 8):
        assert not should_stop("majority", ["5"] * n, None, late)
        assert not should_stop("verifier", ["5"] * n, [1.0] * n, late)
    assert should_stop("majority", ["5"] * 8, None, late)


def test_the_verifier_rules():
    assert should_stop("verifier", ["5", "6", "7", "8"], [0.1, 0.95, 0.2, 0.3], P)
    assert not should_stop("verifier", ["5", "5", "5", "5"], [0.5, 0.89, 0.2, 0.3], P)
    # weighted majority: the same Beta rule on summed scores
    assert should_stop("weighted_majority", ["5"] * 4 + ["6"], [0.9] * 4 + [0.05], P)
    assert not should_stop("weighted_majority", ["5"] * 4 + ["6"], [0.2] * 4 + [0.9], P)
    with pytest.raises(ValueError, match="logprob"):
        should_stop("logprob", ["5"] * 4, None, P)


def test_wave_sizes_reach_the_cap_exactly():
    assert wave_sizes(16, P) == [4, 4, 4, 4]
    assert wave_sizes(16, Adaptive(wave=4, min_candidates=6)) == [6, 4, 4, 2]
    assert wave_sizes(3, P) == [3]
    assert wave_sizes(16, Adaptive(wave=1, min_candidates=1)) == [1] * 16
    assert wave_sizes(16, P, n=5) == [5, 4, 4, 3]  # n choices need n candidates


# ---------------------------------------------------------------------- the pipeline and API


def ask(app, **body):
    async def run():
        async with running(app) as c:
            return await c.post("/v1/chat/completions", json=chat_body(**body))

    return scenario(run)


def drawn(texts, metrics=None, scorer=None, **body):
    """A request to the scripted app; waves of 4 from a minimum of 4 and the classic 0.95
    unless the body says otherwise (the server's defaults are tested on their own)."""
    generator = ScriptedGenerator(texts)
    app = app_with(generator, scorer, metrics)
    body = {"adaptive_wave": 4, "adaptive_min": 4, "adaptive_confidence": 0.95, **body}
    r = ask(app, return_candidates=True, **body)
    assert r.status_code == 200, r.text
    return r.json(), generator


def test_a_unanimous_stream_stops_after_its_first_wave():
    metrics = Metrics()
    body, gen = drawn([FIVE], metrics, best_of=16, adaptive=True, selector="majority")
    bon = body["bon"]
    assert bon["search"] == {
        "mode": "adaptive", "cap": 16, "waves": 1, "candidates_started": 4,
        "candidates_finished": 4, "candidates_pruned": 0, "prune_rounds": 0,
        "stopped_early": True,
    }
    assert len(bon["candidates"]) == 4 and [c["wave"] for c in bon["candidates"]] == [0] * 4
    assert [call.n for call in gen.calls] == [4]
    assert body["usage"]["completion_tokens"] == 4 * len(FIVE)  # what was drawn, no more
    assert sample(metrics, "bon_candidates_not_drawn_total") == 12
    assert sample(metrics, "bon_completion_tokens_not_generated_total") == 12 * len(FIVE)
    assert sample(metrics, "bon_candidates_generated_total", {"selector": "majority"}) == 4


def test_a_split_stream_always_stops_at_the_cap():
    body, gen = drawn([FIVE, SIX], best_of=16, adaptive=True, seed=7)
    bon = body["bon"]
    assert bon["search"]["waves"] == 4 and not bon["search"]["stopped_early"]
    assert [call.n for call in gen.calls] == [4, 4, 4, 4]
    assert [c["wave"] for c in bon["candidates"]] == [w for w in range(4) for _ in range(4)]
    assert body["usage"]["completion_tokens"] == sum(
        c["completion_tokens"] for c in bon["candidates"]
    )
    # every wave its own seed: the same one would redraw the same candidates
    assert [call.params.seed for call in gen.calls] == [7 + WAVE_SEED_STRIDE * w for w in range(4)]


def test_per_request_parameters_override_the_servers():
    body, gen = drawn([FIVE], best_of=16, adaptive=True, adaptive_min=8, adaptive_wave=2)
    assert [call.n for call in gen.calls] == [8]  # unanimous, but not before 8
    body, gen = drawn([FIVE, SIX], best_of=9, adaptive=True, adaptive_wave=2, adaptive_min=2)
    assert [call.n for call in gen.calls] == [2, 2, 2, 2, 1]
    # a lower confidence settles the 3-to-1 split 0.95 does not
    body, gen = drawn([FIVE, FIVE, FIVE, SIX], best_of=16, adaptive=True, adaptive_confidence=0.8)
    assert [call.n for call in gen.calls] == [4]


def test_server_defaults_and_what_a_request_says():
    generator = ScriptedGenerator([FIVE])
    app = app_with(generator, adaptive=True, adaptive_min=2, adaptive_wave=2,
                   adaptive_confidence=0.95)
    search = ask(app, best_of=16).json()["bon"]["search"]
    # two unanimous votes are not enough (0.875), four are (0.97): two waves of 2
    assert search["candidates_started"] == 4 and search["waves"] == 2
    # the shipped defaults: a first wave of 3, then 2 at a time, confidence 0.75
    split = ScriptedGenerator([FIVE, SIX])
    search = ask(app_with(split, adaptive=True), best_of=16).json()["bon"]["search"]
    assert [c.n for c in split.calls] == [3, 2, 2, 2, 2, 2, 2, 1] and search["waves"] == 8
    assert Settings().adaptive_wave == 2 and Settings().adaptive_min == 3
    assert ask(app, best_of=16, adaptive=False).json()["bon"]["search"]["mode"] == "fixed"
    # a selector with no stopping rule: the server default falls back to fixed N ...
    r = ask(app, best_of=8, selector="logprob")
    assert r.json()["bon"]["search"] == {
        "mode": "fixed", "cap": 8, "waves": 1, "candidates_started": 8,
        "candidates_finished": 8, "candidates_pruned": 0, "prune_rounds": 0,
        "stopped_early": False,
    }
    # ... and a request that asks for it is refused, before any engine work
    calls = len(generator.calls)
    err = openai_error(ask(app, best_of=8, selector="logprob", adaptive=True), 400)
    assert err["param"] == "adaptive" and "stopping rule" in err["message"]
    assert len(generator.calls) == calls


@pytest.mark.parametrize(
    "field, value", [("adaptive_wave", 0), ("adaptive_min", 129), ("adaptive_confidence", 0.4),
                     ("adaptive_threshold", 1.5), ("adaptive", "yes")],
)
def test_bad_adaptive_parameters_are_a_400(field, value):
    err = openai_error(ask(app_with(), best_of=8, **{field: value}), 400)
    assert err["param"] == field


def test_verifier_rules_score_each_wave_as_it_lands():
    body, gen = drawn([FIVE, SIX], scorer=ConstantScorer((0.2, 0.95)), best_of=16,
                      adaptive=True, selector="verifier")
    bon = body["bon"]
    assert bon["search"]["candidates_started"] == 4 and bon["search"]["stopped_early"]
    assert bon["verifier_scores"] == [0.2, 0.95, 0.2, 0.95] and bon["chosen"] == [1]
    body, gen = drawn([FIVE, SIX], scorer=ConstantScorer((0.2, 0.5)), best_of=8,
                      adaptive=True, selector="verifier")
    assert body["bon"]["search"]["candidates_started"] == 8  # never 0.9: to the cap


# ---------------------------------------------------------------------- the real engine

engine = pytest.mark.engine


@engine
def test_adaptive_on_the_engine_usage_adds_up(client):
    from conftest import chat

    r = chat(client, Q, seed=1, max_tokens=64,
             extra_body={"best_of": 16, "adaptive": True, "selector": "majority",
                         "adaptive_wave": 4, "adaptive_min": 4, "adaptive_confidence": 0.95,
                         "return_candidates": True})
    search, cands = r.bon["search"], r.bon["candidates"]
    assert search["mode"] == "adaptive" and search["candidates_started"] == len(cands)
    assert len(cands) in (4, 8, 12, 16) and search["waves"] == len(cands) // 4
    assert r.usage.completion_tokens == sum(c["completion_tokens"] for c in cands)
    if search["stopped_early"]:
        answers = [c["answer"] for c in cands]
        top = max(answers.count(a) for a in set(answers) if a is not None)
        runner = sorted(answers.count(a) for a in set(answers) if a is not None)[-2:-1] or [0]
        assert beta_confidence(top, runner[0]) >= 0.95


WAVE = 32  # 32 x 460 tokens with ignore_eos: seconds of engine work, far past the window


@engine
def test_a_disconnect_mid_wave_aborts_it_and_draws_no_more(server):
    tokens = server.metric("vllm:generation_tokens_total")
    sock = send_long_chat(server.port, adaptive=True, adaptive_wave=WAVE, adaptive_min=WAVE)
    try:
        assert wait_for(lambda: server.metric("bon_engine_unfinished_requests") == WAVE)
        assert wait_for(lambda: server.metric("vllm:generation_tokens_total") > tokens)
    finally:
        sock.close()
    # the wave under way is aborted: it grows by less than one full wave
    assert_aborted(
        lambda: server.metric("vllm:generation_tokens_total"),
        lambda: server.metric("bon_engine_unfinished_requests"),
        tokens,
        budget=WAVE * LONG_REQUEST["max_tokens"],
    )
    assert wait_for(lambda: server.metric("bon_requests_in_flight") == 0)
    # and it stays so: no later wave started for the departed client
    assert not wait_for(lambda: server.metric("bon_engine_unfinished_requests") > 0, 1.0)
    assert httpx.get(f"{server.base_url}/health").status_code == 200
