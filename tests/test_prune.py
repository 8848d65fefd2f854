"""Verifier-guided pruning: on scripted candidate streams (which are pruned, what is kept,
usage, refusals), and on the real engine: the candidates it says it pruned are the ones
the engine stops (its unfinished count drops to the survivors, its token counter stops
at what the response reports)."""

from __future__ import annotations

import asyncio

import pytest
from asgi_app import app_with, chat_body, openai_error, running, sample, scenario
from conftest import pruned_long_request, wait_for

from bon_server.config import Settings
from bon_server.generators.fake import ConstantScorer, ScriptedGenerator
from bon_server.metrics import Metrics
from bon_server.search import Prune, draw_pruned
from bon_server.types import Candidate, Progress

THREE = "1 + 1 = 2\n2 + 2 = 4\nThe answer is 4."
SHORT = "The answer is 4."


def ask(app, **body):
    async def run():
        async with running(app) as c:
            return await c.post("/v1/chat/completions", json=chat_body(**body))

    return scenario(run)


def pruned_app(texts=(THREE,), scores=(0.1, 0.9), metrics=None, **settings):
    generator = ScriptedGenerator(texts, delay_s=0.005)
    return app_with(generator, ConstantScorer(scores), metrics, **settings), generator


def test_the_lowest_half_is_aborted_and_never_chosen():
    metrics = Metrics()
    app, gen = pruned_app(metrics=metrics)
    r = ask(app, best_of=8, prune=True, selector="verifier", return_candidates=True)
    assert r.status_code == 200, r.text
    body = r.json()
    bon = body["bon"]
    # the first round scores candidates 0..7 as 0.1, 0.9, 0.1, ...: the 0.1s go
    assert bon["search"]["mode"] == "prune" and bon["search"]["candidates_pruned"] == 4
    assert bon["search"]["candidates_started"] == 8 and bon["search"]["candidates_finished"] == 4
    states = [c["state"] for c in bon["candidates"]]
    assert states == ["pruned", "finished"] * 4
    assert gen.streams_cancelled == 4  # exactly the pruned ones were closed
    for c in bon["candidates"]:
        if c["state"] == "pruned":
            assert c["finish_reason"] == "pruned" and c["score"] == 0.0 and c["answer"] is None
            # the finished lines it was judged on (one or two: the candidates race)
            assert c["text"] in ("1 + 1 = 2\n", "1 + 1 = 2\n2 + 2 = 4\n")
            assert len(c["text"]) <= c["completion_tokens"] < len(THREE)
        else:
            assert c["text"] == THREE and c["completion_tokens"] == len(THREE)
    assert bon["chosen"][0] % 2 == 1
    # usage: every token made, the pruned candidates' partial ones included
    made = sum(c["completion_tokens"] for c in bon["candidates"])
    assert body["usage"]["completion_tokens"] == made
    assert sample(metrics, "bon_candidates_pruned_total") == 4
    saved = sample(metrics, "bon_completion_tokens_not_generated_total")
    assert saved == sum(len(THREE) - c["completion_tokens"] for c in bon["candidates"]
                        if c["state"] == "pruned")


LONG = "1 + 1 = 2\n" * 6 + "The answer is 2."  # far from its end when round 2 comes


def test_rounds_keep_shares_and_at_least_n():
    app, _ = pruned_app(texts=(LONG,))
    bon = ask(app, best_of=8, prune=True, prune_rounds=2, return_candidates=True).json()["bon"]
    assert bon["search"]["candidates_pruned"] == 6 and bon["search"]["prune_rounds"] == 2
    bon = ask(app, best_of=8, n=6, prune=True).json()["bon"]
    assert bon["search"]["candidates_pruned"] == 2  # six choices need six survivors
    bon = ask(app, best_of=8, prune=True, prune_keep=0.25).json()["bon"]
    assert bon["search"]["candidates_pruned"] == 6


def test_candidates_that_end_before_a_round_are_kept():
    app, gen = pruned_app(texts=(SHORT, THREE))
    bon = ask(app, best_of=8, prune=True, return_candidates=True).json()["bon"]
    # the one-line candidates ended at once; of the four racing, two are pruned
    states = [c["state"] for c in bon["candidates"]]
    assert [states[i] for i in (0, 2, 4, 6)] == ["finished"] * 4
    assert bon["search"]["candidates_pruned"] == 2


def test_distinct_keeps_different_prefixes_before_repeats_of_one():
    """Equal scores (a verifier that cannot tell prefixes apart): by start order the two kept
    are both ``A``; with ``prune_distinct`` one ``A`` and the ``B``."""
    a = "1 + 1 = 2\n" + "2 + 2 = 4\n" * 3 + "The answer is 4."
    b = "1 + 2 = 3\n" + "3 + 3 = 6\n" * 3 + "The answer is 6."
    generator = ScriptedGenerator((a, a, a, b), delay_s=0.05)
    app = app_with(generator, ConstantScorer((0.5,)))

    def kept(**options):
        bon = ask(app, best_of=8, prune=True, prune_keep=0.25, return_candidates=True,
                  **options).json()["bon"]
        return [i for i, c in enumerate(bon["candidates"]) if c["state"] == "finished"]

    assert kept() == [0, 1]
    assert kept(prune_distinct=True) == [0, 3]
    server_default = app_with(ScriptedGenerator((a, a, a, b), delay_s=0.05),
                              ConstantScorer((0.5,)), prune_distinct=True)
    bon = ask(server_default, best_of=8, prune=True, prune_keep=0.25,
              return_candidates=True).json()["bon"]
    assert [i for i, c in enumerate(bon["candidates"]) if c["state"] == "finished"] == [0, 3]


def test_prune_is_refused_where_it_cannot_run():
    err = openai_error(ask(app_with(), best_of=8, prune=True), 400)  # no verifier
    assert err["param"] == "prune" and "verifier" in err["message"]
    app, _ = pruned_app()
    err = openai_error(ask(app, best_of=8, prune=True, adaptive=True), 400)
    assert err["param"] == "prune"
    for field, value in (("prune_keep", 0), ("prune_keep", 1.5), ("prune_every", 0)):
        err = openai_error(ask(app, best_of=8, prune=True, **{field: value}), 400)
        assert err["param"] == field
    with pytest.raises(ValueError, match="prune needs --verifier"):
        Settings(prune=True)
    Settings(prune=True, verifier="/v", upstream="http://up:8000/v1")  # proxy mode prunes too
    # the server's --prune default: a request that says adaptive gets adaptive
    app, _ = pruned_app(prune=True, verifier="/unused")
    assert ask(app, best_of=8, adaptive=True).json()["bon"]["search"]["mode"] == "adaptive"
    assert ask(app, best_of=8).json()["bon"]["search"]["mode"] == "prune"


def test_a_cancelled_request_closes_every_stream():
    async def stream(i: int):
        k = 0
        while True:  # never ends: only a cancel stops it
            await asyncio.sleep(0.001)
            k += 1
            yield Progress(Candidate("x\n" * k, (1,) * k, None, "length"))

    async def score(cands):
        return [0.5] * len(cands), None

    async def run():
        task = asyncio.ensure_future(draw_pruned(stream, 6, Prune(), 1, score, True))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

    assert scenario(run) == []  # no follower left running


# ---------------------------------------------------------------------- the real engine


@pytest.mark.engine
def test_pruning_on_the_engine_stops_exactly_the_pruned(server):
    """Sixteen candidates of 460 tokens each (ignore_eos): after the first step the tiny ORM
    ranks them and eight are aborted; the engine holds eight, and its token counter ends at
    what the response reports, far below 16 x 460."""
    tokens = server.metric("vllm:generation_tokens_total")
    unfinished = "bon_engine_unfinished_requests"
    out = pruned_long_request(server.base_url, lambda: server.metric(unfinished))
    generated = server.metric("vllm:generation_tokens_total") - tokens
    # the engine made what the response counts (an abort lands within a step of the cancel)
    counted = out["usage"]["completion_tokens"]
    assert counted <= generated <= counted + 8 * 2
    assert generated < 16 * 460
    assert wait_for(lambda: server.metric("bon_engine_unfinished_requests") == 0)


def test_score_while_decoding_scores_early_finishers_before_the_last_ends():
    """--score-while-decoding: fixed N with a verifier goes candidate by candidate, and a
    candidate that ends is scored while the others still decode."""
    generator = ScriptedGenerator([SHORT, THREE + "\nmore\nmore\nmore"], delay_s=0.01)
    seen: list[int] = []

    class Recording(ConstantScorer):
        async def score(self, prompt, candidates, aggregation=None):
            seen.append(generator.streams_finished)
            return await super().score(prompt, candidates, aggregation)

    app = app_with(generator, Recording((0.3, 0.7)), score_while_decoding=True)
    bon = ask(app, best_of=6, selector="verifier", return_candidates=True).json()["bon"]
    assert bon["search"]["mode"] == "fixed" and bon["search"]["candidates_pruned"] == 0
    assert generator.calls == []  # no n=6 engine call: six followed candidates
    assert len(seen) == 6 and min(seen) < 6  # scored before every candidate had ended
    assert all(c["state"] == "finished" for c in bon["candidates"])
    assert bon["verifier_scores"] is not None and len(bon["verifier_scores"]) == 6
    # majority needs no verifier: the one-call path as before
    ask(app, best_of=6, selector="majority")
    assert len(generator.calls) == 1 and generator.calls[0].n == 6
