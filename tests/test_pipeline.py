"""BestOfN.plan / run against the scripted generator and constant scorer (no engine)."""

from __future__ import annotations

import asyncio

import pytest

from bon_server.errors import InvalidRequestError, ServiceUnavailableError, UpstreamError
from bon_server.generators.fake import ConstantScorer, ScriptedGenerator
from bon_server.metrics import Metrics
from bon_server.pipeline import BestOfN, Policy
from bon_server.types import Message, Prompt, SamplingParams

PROMPT = Prompt(messages=(Message("user", "What is 2 + 3?"),))
PARAMS = SamplingParams(max_tokens=64)
TEXTS = ("= 5\nThe answer is 5.", "= 6\nThe answer is 6.", "= 5\nThe answer is 5.0.", "hmm")


def make(texts=TEXTS, scorer=None, metrics=None, **policy) -> tuple[BestOfN, ScriptedGenerator]:
    gen = ScriptedGenerator(texts)
    return BestOfN(gen, scorer, Policy(**policy), metrics), gen


def run(pipeline: BestOfN, **plan_kwargs):
    plan = pipeline.plan(PROMPT, plan_kwargs.pop("params", PARAMS), **plan_kwargs)
    return plan, asyncio.run(pipeline.run(plan))


# ------------------------------------------------------------------ plan


def test_one_generator_call_with_n_equal_to_best_of():
    pipeline, gen = make()
    plan, result = run(pipeline, n=2, best_of=6)
    assert plan.best_of == 6
    assert len(gen.calls) == 1
    assert gen.calls[0].n == 6
    assert gen.calls[0].prompt == PROMPT
    assert len(result.candidates) == 6


@pytest.mark.parametrize("n, default, expected", [(1, 4, 4), (3, 4, 4), (6, 4, 6), (1, 1, 1)])
def test_best_of_defaults_to_max_of_default_and_n(n, default, expected):
    pipeline, gen = make(default_best_of=default)
    plan = pipeline.plan(PROMPT, PARAMS, n=n)
    assert plan.best_of == expected
    assert plan.request.n == expected
    assert gen.calls == []  # planning never touches the engine


def test_best_of_above_limit_names_best_of():
    pipeline, _ = make(max_best_of=8)
    with pytest.raises(InvalidRequestError) as info:
        pipeline.plan(PROMPT, PARAMS, n=1, best_of=9)
    assert info.value.status_code == 400
    assert info.value.param == "best_of"
    assert "8" in info.value.message
    assert pipeline.plan(PROMPT, PARAMS, n=1, best_of=8).best_of == 8


def test_n_above_limit_names_n():
    pipeline, _ = make(max_best_of=8)
    with pytest.raises(InvalidRequestError) as info:
        pipeline.plan(PROMPT, PARAMS, n=9)
    assert info.value.param == "n"


def test_unknown_selector_lists_valid_ones():
    pipeline, _ = make()
    with pytest.raises(InvalidRequestError) as info:
        pipeline.plan(PROMPT, PARAMS, selector="oracle")
    assert info.value.param == "selector"
    for name in ("verifier", "weighted_majority", "majority", "logprob"):
        assert name in info.value.message


@pytest.mark.parametrize("selector", ["verifier", "weighted_majority"])
def test_verifier_selectors_need_a_scorer(selector):
    pipeline, _ = make()
    with pytest.raises(InvalidRequestError) as info:
        pipeline.plan(PROMPT, PARAMS, selector=selector)
    assert info.value.param == "selector"
    assert "verifier" in info.value.message
    with_scorer, _ = make(scorer=ConstantScorer())
    assert with_scorer.plan(PROMPT, PARAMS, selector=selector).selector == selector


def test_default_selector_comes_from_policy():
    pipeline, _ = make(default_selector="logprob")
    assert pipeline.plan(PROMPT, PARAMS).selector == "logprob"
    assert pipeline.plan(PROMPT, PARAMS, selector="majority").selector == "majority"


def test_logprob_selector_forces_logprobs_on():
    pipeline, gen = make()
    plan = pipeline.plan(PROMPT, PARAMS, selector="logprob")
    assert PARAMS.logprobs is None
    assert plan.request.params.logprobs == 0
    keep = SamplingParams(logprobs=3)
    assert pipeline.plan(PROMPT, keep, selector="logprob").request.params.logprobs == 3
    assert pipeline.plan(PROMPT, PARAMS, selector="majority").request.params.logprobs is None


def test_logprob_selector_runs():
    pipeline, gen = make()
    _, result = run(pipeline, best_of=3, selector="logprob")
    # the scripted generator gives candidate i a mean logprob of -0.1 * (i + 1)
    assert result.scores == pytest.approx((-0.1, -0.2, -0.3))
    assert result.order == (0, 1, 2)


def test_logprob_selector_does_not_hand_back_logprobs_nobody_asked_for():
    pipeline, gen = make()
    _, result = run(pipeline, best_of=2, selector="logprob")
    assert gen.calls[0].params.logprobs == 0  # the engine had to compute them...
    assert [c.logprobs for c in result.candidates] == [None, None]  # ...the client did not ask
    _, asked = run(pipeline, best_of=2, selector="logprob", params=SamplingParams(logprobs=0))
    assert all(c.logprobs is not None for c in asked.candidates)


def test_unknown_aggregation_rejected():
    pipeline, _ = make(scorer=ConstantScorer())
    with pytest.raises(InvalidRequestError) as info:
        pipeline.plan(PROMPT, PARAMS, selector="verifier", aggregation="median")
    assert info.value.param == "prm_aggregation"


def test_aggregation_dropped_for_an_orm():
    pipeline, _ = make(scorer=ConstantScorer())
    plan = pipeline.plan(PROMPT, PARAMS, selector="verifier", aggregation="min")
    assert plan.aggregation is None


def test_prompt_too_long_is_a_400_at_plan_time():
    gen = ScriptedGenerator(max_model_len=8)
    pipeline = BestOfN(gen)
    with pytest.raises(InvalidRequestError):
        pipeline.plan(Prompt(text="x" * 20), PARAMS)
    assert gen.calls == []


# ------------------------------------------------------------------ run


def test_majority_run_extracts_and_groups_answers():
    pipeline, _ = make()
    _, result = run(pipeline, best_of=4, selector="majority")
    assert result.answers == ("5", "6", "5", None)  # "5.0" normalized into the "5" group
    assert result.scores == pytest.approx((0.5, 0.25, 0.5, 0.0))
    assert result.order == (0, 2, 1, 3)
    assert result.verifier_scores is None
    assert result.selector == "majority"


def test_answer_rules_come_from_policy():
    pipeline, _ = make(texts=("I say 7", "I say 7", "I say 8"), answer_rules=("last_number",))
    _, result = run(pipeline, best_of=3, selector="majority")
    assert result.answers == ("7", "7", "8")
    assert result.order[0] == 0


def test_countdown_votes_merge_the_ways_of_writing_one_answer():
    texts = ("The answer is 3 * 4 + 2.", "The answer is 2 + 3 * 4.", "The answer is 4 * 3 + 2.",
             "The answer is 2 * 4 + 3.", "The answer is 2 * 4 + 3.")
    pipeline, _ = make(texts=texts, answer_rules=("expression_value",))
    _, result = run(pipeline, best_of=5, selector="majority")
    assert result.answers[:3] == ("[2,3,4]->14",) * 3
    assert result.order[0] == 0  # three ways to write 14 outvote two copies of 11
    # by text, the two copies of the wrong one would have won
    pipeline, _ = make(texts=texts)
    _, result = run(pipeline, best_of=5, selector="majority")
    assert result.order[0] == 3


def test_verifier_run_uses_scorer():
    pipeline, _ = make(scorer=ConstantScorer([0.1, 0.9, 0.4, 0.3]))
    _, result = run(pipeline, best_of=4, selector="verifier")
    assert result.verifier_scores == (0.1, 0.9, 0.4, 0.3)
    assert result.scores == (0.1, 0.9, 0.4, 0.3)
    assert result.order == (1, 2, 3, 0)


def test_weighted_majority_run():
    # "5" holds 0.1 + 0.4 = 0.5 of the verifier mass, "6" holds 0.45, "hmm" none
    pipeline, _ = make(scorer=ConstantScorer([0.1, 0.45, 0.4, 0.05]))
    _, result = run(pipeline, best_of=4, selector="weighted_majority")
    assert result.order == (2, 0, 1, 3)
    assert result.scores == pytest.approx((0.5, 0.45, 0.5, 0.0))


def test_usage_counts_every_candidate():
    pipeline, _ = make()
    _, result = run(pipeline, best_of=5)
    expected = sum(len(TEXTS[i % len(TEXTS)]) for i in range(5))
    assert result.completion_tokens == expected
    assert result.prompt_tokens == len("What is 2 + 3?") + 2


def test_failing_scorer_is_service_unavailable():
    pipeline, _ = make(scorer=ConstantScorer(fail_with=RuntimeError("CUDA out of memory")))
    plan = pipeline.plan(PROMPT, PARAMS, selector="verifier")
    with pytest.raises(ServiceUnavailableError) as info:
        asyncio.run(pipeline.run(plan))
    assert info.value.status_code == 503
    assert "CUDA out of memory" in info.value.message


def test_scorer_bon_errors_pass_through():
    pipeline, _ = make(scorer=ConstantScorer(fail_with=UpstreamError("verifier host down")))
    plan = pipeline.plan(PROMPT, PARAMS, selector="verifier")
    with pytest.raises(UpstreamError):
        asyncio.run(pipeline.run(plan))


def test_scorer_not_called_for_majority():
    pipeline, _ = make(scorer=ConstantScorer(fail_with=RuntimeError("must not be called")))
    _, result = run(pipeline, selector="majority")
    assert result.verifier_scores is None


# ------------------------------------------------------------------ metrics


def sample(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    return metrics.registry.get_sample_value(name, labels or {}) or 0.0


def test_metrics_count_candidates_and_tokens():
    metrics = Metrics()
    pipeline, _ = make(scorer=ConstantScorer(), metrics=metrics)
    run(pipeline, best_of=3, selector="majority")
    run(pipeline, best_of=2, selector="verifier")
    run(pipeline, best_of=4, selector="verifier")
    assert sample(metrics, "bon_candidates_generated_total", {"selector": "majority"}) == 3
    assert sample(metrics, "bon_candidates_generated_total", {"selector": "verifier"}) == 6
    tokens = sum(len(TEXTS[i % len(TEXTS)]) for k in (3, 2, 4) for i in range(k))
    assert sample(metrics, "bon_completion_tokens_total") == tokens
    assert sample(metrics, "bon_prompt_tokens_total") == 3 * (len("What is 2 + 3?") + 2)
    assert sample(metrics, "bon_generation_duration_seconds_count") == 3
    # scoring is timed only when a verifier ran
    assert sample(metrics, "bon_scoring_duration_seconds_count") == 2
