"""Best-of-N: generate -> score -> select. Imports nothing from FastAPI.

``BestOfN.plan`` validates a request and renders its prompt without touching the
engine, so every client mistake is known before a response starts (a streaming
request still gets a plain 400). ``BestOfN.run`` then makes ONE generator call
with ``n = best_of``, scores the candidates when the selector needs a verifier,
and ranks them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from .answers import DEFAULT_RULES, extract_answer
from .errors import BonError, InvalidRequestError, ServiceUnavailableError
from .generators.base import Generator, PreparedRequest
from .metrics import Metrics
from .scorers.base import Scorer, StepScorer, aggregate, check_aggregation
from .selectors import SELECTORS, SelectorInput, check_selector
from .types import BestOfNResult, Prompt, SamplingParams


@dataclass(frozen=True, slots=True)
class Plan:
    request: PreparedRequest
    selector: str
    aggregation: str | None
    # the selector needed logprobs the client did not ask for: drop them from the result
    drop_logprobs: bool = False

    @property
    def best_of(self) -> int:
        return self.request.n


@dataclass(frozen=True, slots=True)
class Policy:
    """The server-side knobs the pipeline needs (a slice of Settings)."""

    default_best_of: int = 4
    max_best_of: int = 64
    default_selector: str = "majority"
    answer_rules: tuple[str, ...] = DEFAULT_RULES
    max_tokens_limit: int | None = None


class BestOfN:
    def __init__(
        self,
        generator: Generator,
        scorer: Scorer | None = None,
        policy: Policy | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.generator = generator
        self.scorer = scorer
        self.policy = policy or Policy()
        self.metrics = metrics or Metrics()

    def plan(
        self,
        prompt: Prompt,
        params: SamplingParams,
        *,
        n: int = 1,
        best_of: int | None = None,
        selector: str | None = None,
        aggregation: str | None = None,
    ) -> Plan:
        policy = self.policy
        if best_of is None:
            best_of = max(policy.default_best_of, n)
        if best_of < n:
            raise InvalidRequestError(
                f"best_of ({best_of}) must be greater than or equal to n ({n})", param="best_of"
            )
        if best_of > policy.max_best_of:
            raise InvalidRequestError(
                f"best_of ({best_of}) exceeds this server's limit ({policy.max_best_of})",
                param="best_of" if best_of > n else "n",
            )
        limit = policy.max_tokens_limit
        if limit is not None and params.max_tokens is not None and params.max_tokens > limit:
            raise InvalidRequestError(
                f"max_tokens ({params.max_tokens}) exceeds this server's limit ({limit})",
                param="max_tokens",
            )
        name = selector or policy.default_selector
        try:
            spec = check_selector(name)
        except ValueError as exc:
            raise InvalidRequestError(str(exc), param="selector") from None
        if aggregation is not None:
            try:
                check_aggregation(aggregation)
            except ValueError as exc:
                raise InvalidRequestError(str(exc), param="prm_aggregation") from None
        if spec.needs_verifier and self.scorer is None:
            raise InvalidRequestError(
                f"selector {name!r} needs a verifier, and this server has none loaded; "
                "use 'majority' or 'logprob', or start the server with --verifier",
                param="selector",
            )
        drop_logprobs = spec.needs_logprobs and params.logprobs is None
        if drop_logprobs:
            params = dataclasses.replace(params, logprobs=0)
        if self.scorer is None or self.scorer.kind != "prm":
            aggregation = None
        elif aggregation is None:  # the server's --prm-aggregation: say which one scored
            aggregation = getattr(self.scorer, "aggregation", None)
        request = self.generator.prepare(prompt, params, best_of)
        return Plan(request, name, aggregation, drop_logprobs)

    async def run(self, plan: Plan) -> BestOfNResult:
        spec = SELECTORS[plan.selector]
        t0 = time.perf_counter()
        generation = await self.generator.generate(plan.request)
        t1 = time.perf_counter()
        candidates = generation.candidates
        if plan.drop_logprobs:
            candidates = tuple(dataclasses.replace(c, logprobs=None) for c in candidates)
        answers = tuple(extract_answer(c.text, self.policy.answer_rules) for c in candidates)

        verifier_scores: Sequence[float] | None = None
        step_scores: list[list[float]] | None = None
        if spec.needs_verifier:
            assert self.scorer is not None
            try:
                if self.scorer.kind == "prm":  # keep the steps' scores: the response shows them
                    prm = cast(StepScorer, self.scorer)
                    step_scores = await prm.step_scores(plan.request.prompt, candidates)
                    how = plan.aggregation or prm.aggregation
                    verifier_scores = [aggregate(s, how) for s in step_scores]
                else:
                    verifier_scores = await self.scorer.score(
                        plan.request.prompt, candidates, plan.aggregation
                    )
            except BonError:
                raise
            except Exception as exc:
                raise ServiceUnavailableError(f"the verifier failed: {exc}") from exc
        t2 = time.perf_counter()

        selection = spec.fn(SelectorInput(candidates, answers, verifier_scores))
        m = self.metrics
        m.candidates.labels(plan.selector).inc(len(candidates))
        m.prompt_tokens.inc(generation.prompt_tokens)
        m.completion_tokens.inc(sum(len(c.token_ids) for c in candidates))
        m.generation_duration.observe(t1 - t0)
        if spec.needs_verifier:
            m.scoring_duration.observe(t2 - t1)
        return BestOfNResult(
            candidates=candidates,
            answers=answers,
            scores=tuple(selection.scores),
            verifier_scores=tuple(verifier_scores) if verifier_scores is not None else None,
            order=tuple(selection.order),
            selector=plan.selector,
            aggregation=plan.aggregation,
            prompt_tokens=generation.prompt_tokens,
            timings={"generate_s": t1 - t0, "score_s": t2 - t1},
            step_scores=None if step_scores is None else tuple(map(tuple, step_scores)),
        )
