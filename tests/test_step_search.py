"""Step search (beam, DVTS, particles): the algorithms on scripted generators and scorers, the
request fields through the HTTP surface, and the world checkers as step scorers."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Sequence

import pytest
from fastapi.testclient import TestClient

from bon_server.app import create_app
from bon_server.config import Settings
from bon_server.generators.fake import ScriptedGenerator
from bon_server.scorers.plugins import PythonStepScorer, TaskStepScorer
from bon_server.search.steps import Beam, StepSearch, resample, run_search
from bon_server.tasks import get_task
from bon_server.types import Candidate, Message, Piece, Prompt


class Tree:
    """A scripted policy and scorer: every step of every beam is a fresh token; a beam's
    score is given by ``value(beam)``; beams end after ``depth`` steps (EOS)."""

    def __init__(self, depth: int = 3, value=None) -> None:
        self.depth = depth
        self.value = value or (lambda beam: random.Random(beam.text).random())
        self.asks: list[list[tuple[Beam, int]]] = []
        self.finals: list[bool] = []
        self.counter = 0

    async def expand(self, asks: Sequence[tuple[Beam, int]], final: bool) -> list[list[Piece]]:
        self.asks.append(list(asks))
        self.finals.append(final)
        out = []
        for beam, k in asks:
            pieces = []
            for _ in range(k):
                self.counter += 1
                last = final or len(beam.steps) + 1 >= self.depth
                text = f"s{self.counter}" + ("" if last else "\n")
                pieces.append(Piece(text, (self.counter,), -1.0, ended=last))
            out.append(pieces)
        return out

    async def judge(self, beams: Sequence[Beam]) -> list[float]:
        return [self.value(b) for b in beams]


def search(method: str, n: int, tree: Tree, width: int = 4, max_steps: int = 16,
           temperature: float = 0.1, seed: int = 0):
    spec = StepSearch(method=method, width=width, max_steps=max_steps, temperature=temperature)
    return asyncio.run(run_search(spec, n, tree.expand, tree.judge, random.Random(seed)))


def test_beam_keeps_the_best_n_over_m_and_expands_each_m_ways():
    tree = Tree(depth=4)
    out = search("beam", 16, tree, width=4)
    rounds = [(len(a), {k for _, k in a}) for a in tree.asks]
    assert rounds == [(1, {16}), (4, {4}), (4, {4}), (4, {4})]
    assert len(out.beams) == 16 and all(b.done for b in out.beams)
    assert out.steps == 4 and out.expanded == 64 and out.dropped == 36  # 3 rounds drop 12
    assert out.tokens == 64


def test_beam_keeps_exactly_the_top_scored():
    tree = Tree(depth=2, value=lambda b: int(b.steps[-1].strip()[1:]) if b.steps else 0)
    search("beam", 8, tree, width=2)
    first, second = tree.asks
    # 8 drawn from the prompt (s1..s8, higher counter = higher score): the best 4 are s5..s8
    assert sorted(b.steps[0].strip() for b, _ in second) == ["s5", "s6", "s7", "s8"]
    assert all(k == 2 for _, k in second)


def test_dvts_keeps_its_subtrees_apart():
    # subtree 0's beams always score above subtree 1's: beam search would keep only those,
    # DVTS still grows subtree 1 from its own best
    tree = Tree(depth=4, value=lambda b: (1.0 if b.tree == 0 else 0.0) + len(b.steps) * 0.01)
    out = search("dvts", 8, tree, width=4)
    assert [len(a) for a in tree.asks] == [2, 2, 2, 2]
    for step in tree.asks[1:]:
        assert sorted(b.tree for b, _ in step) == [0, 1]
        assert all(k == 4 for _, k in step)
    for beam in out.beams:  # every finished beam descends from its own subtree's root
        assert beam.tree in (0, 1)
    assert Counter(b.tree for b in out.beams) == {0: 4, 1: 4}
    beam_tree = Tree(depth=4, value=tree.value)
    search("beam", 8, beam_tree, width=4)
    assert {b.tree for a in beam_tree.asks[1:] for b, _ in a} == {0}


def test_particles_resample_in_proportion_to_softmax():
    rng = random.Random(0)
    scores = [0.0, 0.5, 1.0]
    temperature = 0.5
    draws = Counter(resample(scores, 60_000, temperature, rng))
    import math

    weights = [math.exp(s / temperature) for s in scores]
    for i, w in enumerate(weights):
        assert draws[i] / 60_000 == pytest.approx(w / sum(weights), abs=0.01)


def test_particles_follow_the_scorer_and_keep_the_population():
    # only the particle grown from the first draw is worth anything: at a low temperature
    # every resampled particle descends from it
    tree = Tree(depth=3, value=lambda b: 1.0 if b.steps[0].startswith("s1\n") else 0.0)
    out = search("particles", 8, tree, temperature=0.01)
    assert len(out.beams) == 8
    assert all(b.steps[0] == "s1\n" for b in out.beams)
    # each round asks once per distinct live particle, for as many copies as were drawn
    assert sum(k for _, k in tree.asks[1]) == 8 and len(tree.asks[1]) == 1


@pytest.mark.parametrize("method", ["beam", "dvts", "particles"])
def test_every_search_stops_at_eos(method):
    tree = Tree(depth=2)
    out = search(method, 8, tree, width=2)
    assert out.steps == 2 and tree.finals == [False, False]
    assert all(b.done and len(b.steps) == 2 for b in out.beams)


@pytest.mark.parametrize("method", ["beam", "dvts", "particles"])
def test_every_search_stops_at_the_step_limit(method):
    tree = Tree(depth=100)
    out = search(method, 8, tree, width=2, max_steps=3)
    assert out.steps == 3
    assert tree.finals == [False, False, True]  # the last round runs to the end (no stop)
    assert all(b.done and len(b.steps) == 3 for b in out.beams)


# ------------------------------------------------------------------ the HTTP surface

TEXTS = (
    "2 + 3 = 5\n5 * 2 = 10\nThe answer is 10.",
    "2 + 3 = 6\n6 * 2 = 12\nThe answer is 12.",
    "2 + 3 = 5\n5 * 2 = 11\nThe answer is 11.",
)
MESSAGES = [{"role": "user", "content": "What is (2 + 3) * 2?"}]


def exact_arithmetic(question: str, steps: list[str]) -> list[float]:
    """A py: step scorer: a step ``a op b = c`` is right when the arithmetic is."""
    from bon_server.tasks.arith import step_arithmetic_ok

    return [0.0 if step_arithmetic_ok(s) is False else 1.0 for s in steps]


def serve(scorer=None, generator=None, **settings) -> TestClient:
    settings.setdefault("keepalive_interval_s", 5.0)
    settings.setdefault("model", "bon_server/embedded/arith-policy")
    scorer = scorer if scorer is not None else PythonStepScorer(exact_arithmetic, "exact")
    return TestClient(create_app(Settings(**settings), generator=generator or
                                 ScriptedGenerator(TEXTS), scorer=scorer))


@pytest.mark.parametrize("method", ["beam", "dvts", "particles"])
def test_a_search_request_returns_the_right_candidate_and_reports_the_search(method):
    generator = ScriptedGenerator(TEXTS)
    with serve(generator=generator) as client:
        r = client.post("/v1/chat/completions", json={
            "messages": MESSAGES, "best_of": 4, "search": method, "beam_width": 2,
            "selector": "verifier", "return_candidates": True})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["choices"][0]["message"]["content"] == TEXTS[0]
    search = out["bon"]["search"]
    assert search["mode"] == method and search["steps"] == 3
    assert search["beams_expanded"] == sum(a.n for call in generator.extend_calls for a in call)
    assert search.get("beam_width") == (None if method == "particles" else 2)
    cands = out["bon"]["candidates"]
    assert all(c["steps"] and len(c["steps"]) == 3 for c in cands)
    generated = sum(len(p) for call in generator.extend_calls for a in call for p in [a.prefix])
    assert generated >= 0
    # usage: every character drawn, by every beam, dropped ones included
    assert out["usage"]["completion_tokens"] >= sum(c["completion_tokens"] for c in
                                                     {c["text"]: c for c in cands}.values())
    assert len(generator.calls) == 0  # no whole-candidate draw: steps only


def test_usage_counts_every_generated_token():
    generator = ScriptedGenerator(TEXTS)
    with serve(generator=generator) as client:
        r = client.post("/v1/chat/completions", json={
            "messages": MESSAGES, "best_of": 4, "search": "beam", "beam_width": 2})
    # the scripted pieces are one token a character: the steps are 10, 10 and 17 characters
    drawn = {"beam": 0}
    for call in generator.extend_calls:
        for ask in call:
            drawn["beam"] += ask.n
    out = r.json()
    assert out["bon"]["search"]["beams_expanded"] == drawn["beam"]
    # 4 first steps (10 chars) + 4 second (11) + 4 answers (17): the beam keeps 2, expands 2
    assert out["usage"]["completion_tokens"] == 4 * 10 + 4 * 11 + 4 * len("The answer is 10.")


@pytest.mark.parametrize(("body", "param", "words"), [
    ({"search": "beam", "best_of": 6, "beam_width": 4}, "beam_width", "must divide"),
    ({"search": "dvts", "best_of": 4, "beam_width": 8}, "beam_width", "must divide"),
    ({"search": "mcts", "best_of": 4}, "search", "valid searches"),
    ({"search": "beam", "best_of": 4, "prune": True}, "search", "cannot be combined"),
    ({"search": "beam", "best_of": 4, "logprobs": True}, "logprobs", "not returned"),
])
def test_bad_search_parameters_are_a_400_that_changes_nothing(body, param, words):
    generator = ScriptedGenerator(TEXTS)
    with serve(generator=generator) as client:
        r = client.post("/v1/chat/completions", json={"messages": MESSAGES, **body})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and words in error["message"]
    assert generator.extend_calls == [] and generator.calls == []


def test_a_search_with_no_step_scorer_is_a_400():
    generator = ScriptedGenerator(TEXTS)
    app = create_app(Settings(model="bon_server/embedded/arith-policy", keepalive_interval_s=5.0),
                     generator=generator, scorer=None)
    with TestClient(app) as client:
        r = client.post("/v1/chat/completions",
                        json={"messages": MESSAGES, "search": "particles", "best_of": 4})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "search"
    assert "step scorer" in r.json()["error"]["message"]
    assert generator.extend_calls == []


def test_the_server_default_search_and_a_request_back_to_best_of_n():
    generator = ScriptedGenerator(TEXTS)
    with serve(generator=generator, search="beam", beam_width=2,
               verifier="py:tests.test_step_search:exact_arithmetic") as client:
        r = client.post("/v1/chat/completions", json={"messages": MESSAGES, "best_of": 4})
        assert r.json()["bon"]["search"]["mode"] == "beam"
        r = client.post("/v1/chat/completions",
                        json={"messages": MESSAGES, "best_of": 4, "search": "best_of_n"})
        assert r.json()["bon"]["search"]["mode"] == "fixed"


def test_a_search_is_cancelled_with_its_request():
    """A deadline ends the search: its pending step is cancelled (the engine's abort)."""
    generator = ScriptedGenerator(TEXTS, delay_s=2.0)
    with serve(generator=generator, request_timeout=0.5) as client:
        r = client.post("/v1/chat/completions",
                        json={"messages": MESSAGES, "best_of": 4, "search": "beam",
                              "beam_width": 2})
    assert r.status_code == 504, r.text
    assert generator.cancelled == 1


# ------------------------------------------------------------------ task:<world>

@pytest.mark.parametrize("world", ["countdown", "paths", "arith"])
def test_a_world_checker_scores_a_right_solution_and_refuses_a_wrong_answer(world):
    task = get_task(world)
    scorer = TaskStepScorer(world)
    problem = task.problems(1, seed=7)[0]
    right = task.reference(problem)
    prompt = Prompt(messages=(Message("user", problem.question),))
    wrong = right.rsplit("The answer is", 1)[0] + "The answer is 123456789."
    scores = asyncio.run(scorer.step_scores(prompt, [Candidate(right, (), None, "stop"),
                                                     Candidate(wrong, (), None, "stop")]))
    assert scores[0] == [1.0] * len(scores[0])
    assert scores[1][-1] == 0.0
    # a partial solution (stopped at a step's end) is judged by its steps so far
    first = right.splitlines()[0] + "\n"
    partial = asyncio.run(scorer.step_scores(prompt, [Candidate(first, (), None, "stop")]))
    assert len(partial[0]) == 1


def test_a_world_checker_refuses_another_worlds_prompt():
    with serve(scorer=TaskStepScorer("countdown")) as client:
        r = client.post("/v1/chat/completions",
                        json={"messages": MESSAGES, "best_of": 4, "search": "beam",
                              "beam_width": 2})
    assert r.status_code == 400
    assert "task:countdown" in r.json()["error"]["message"]


def test_plugin_verifiers_load_by_name():
    from bon_server.scorers import build_scorer

    assert isinstance(build_scorer(Settings(verifier="task:countdown")), TaskStepScorer)
    scorer = build_scorer(Settings(verifier="py:tests.test_step_search:exact_arithmetic"))
    assert isinstance(scorer, PythonStepScorer)
    with pytest.raises(ValueError, match="valid worlds"):
        build_scorer(Settings(verifier="task:chess"))
    with pytest.raises(ValueError, match="cannot load"):
        build_scorer(Settings(verifier="py:no_such_module:fn"))
