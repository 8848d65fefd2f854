"""Best-of-N: generate -> score -> select. Imports nothing from FastAPI.

``BestOfN.plan`` validates a request and renders its prompt without touching the
engine, so every client mistake is known before a response starts (a streaming
request still gets a plain 400). ``BestOfN.run`` then makes ONE generator call
with ``n = best_of``, scores the candidates when the selector needs a verifier,
and ranks them; or, for an adaptive plan, draws waves (one generator call each),
scoring each wave as it lands, until ``search.should_stop`` or the cap.

Answers become votes in one place, ``answers.AnswerGroups`` (wrapped here by ``Votes``): the
selector, the stopping rule and the response all take its keys. A pairwise rule (``math``)
runs sympy, so its grouping runs off the event loop, in a daemon thread, and the request waits
for it at most ``GROUPING_TIMEOUT_S``; past that the request votes by text.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from .answers import DEFAULT_RULES
from .code_tests import TestRunner, Tests, rank, signature
from .errors import BonError, InvalidRequestError, ServiceUnavailableError
from .generators.base import Generator, PreparedRequest, StreamingGenerator
from .metrics import Metrics
from .sandbox import Limits, TestReport, split_tests
from .scorers.base import Scorer, StepScorer, aggregate, check_aggregation
from .search import (
    ADAPTIVE_SELECTORS,
    METHODS,
    SEED_STRIDE,
    Adaptive,
    Prune,
    StepSearch,
    check_search,
    draw_pruned,
    should_stop,
    wave_sizes,
)
from .search.prune import Scores
from .selectors import SELECTORS, SelectorInput, check_selector
from .step_runs import run_step_search
from .types import BestOfNResult, Candidate, Prompt, SamplingParams, Search
from .votes import Votes


def _given(options: dict[str, float | int | None]) -> dict[str, float | int]:
    """The overrides a request named (None: not given, the server's default stands)."""
    return {k: v for k, v in options.items() if v is not None}


WAVE_SEED_STRIDE = SEED_STRIDE  # wave w of a seeded request samples with seed + w * this



@dataclass(frozen=True, slots=True)
class Plan:
    request: PreparedRequest
    selector: str
    aggregation: str | None
    # the selector needed logprobs the client did not ask for: drop them from the result
    drop_logprobs: bool = False
    adaptive: Adaptive | None = None  # draw in waves up to best_of (None: all at once)
    choices: int = 1  # the client's n
    prune: Prune | None = None  # start all, abort the weakest at step boundaries
    step_search: StepSearch | None = None  # grow candidates step by step (beam, dvts, particles)
    tests: Tests | None = None  # run each candidate's program against these, rank by them

    @property
    def best_of(self) -> int:
        return self.request.n


@dataclass(frozen=True, slots=True)
class Policy:
    """The server-side knobs the pipeline needs (a slice of Settings)."""

    default_best_of: int = 4
    max_best_of: int = 64
    default_selector: str = "majority"
    answer_rules: tuple[str, ...] = DEFAULT_RULES  # see answers.AnswerGroups
    max_tokens_limit: int | None = None
    adaptive: bool = False  # --adaptive: requests that do not say are adaptive
    adaptive_params: Adaptive = Adaptive()  # --adaptive-wave, -min, -confidence, -threshold
    prune: bool = False  # --prune: requests that do not say are pruned
    prune_params: Prune = Prune()  # --prune-every, -keep, -rounds
    # --score-while-decoding: fixed N with a verifier follows each candidate on its own and
    # scores it as it ends, while the others still decode
    score_while_decoding: bool = False
    search: str = "best_of_n"  # --search: requests that do not say search this way
    search_params: StepSearch = StepSearch()  # --beam-width, --search-max-steps, -temperature
    step_separator: str = "\n"  # where a step ends (the world's: a line; --step-separator)
    tests_timeout_s: float = 10.0  # --tests-timeout-s: a request's default and its cap
    tests_concurrency: int = 2  # --tests-concurrency: sandboxed candidates at once
    tests_memory_mb: int = 1024  # --tests-memory-mb


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
        self.tests = TestRunner(self.policy.tests_concurrency)

    def plan(
        self,
        prompt: Prompt,
        params: SamplingParams,
        *,
        n: int = 1,
        best_of: int | None = None,
        selector: str | None = None,
        aggregation: str | None = None,
        adaptive: bool | None = None,
        adaptive_options: dict[str, float | int | None] | None = None,
        prune: bool | None = None,
        prune_options: dict[str, float | int | None] | None = None,
        search: str | None = None,
        search_options: dict[str, float | int | None] | None = None,
        tests: str | Sequence[str] | None = None,
        tests_timeout_s: float | None = None,
    ) -> Plan:
        """``adaptive``, ``prune``, ``search``: None follows the server (``--adaptive``,
        ``--prune``, ``--search``); the options override their fields by name. ``tests``:
        every candidate's program runs them in the sandbox and selection ranks by them."""
        policy = self.policy
        checks = self._tests(tests, tests_timeout_s)
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
        if checks is not None:  # whole candidates only: a step search, pruning cut them short
            for field, value in (("search", search not in (None, "best_of_n")), ("prune", prune)):
                if value:
                    raise InvalidRequestError(
                        f"tests cannot be combined with {field}; candidates are tested whole",
                        param="tests",
                    )
            search, prune = "best_of_n", False
        stepwise = self._step_search(best_of, search, search_options or {}, params)
        if stepwise is not None:
            asked = [f for f, v in (("adaptive", adaptive), ("prune", prune)) if v]
            if asked:
                raise InvalidRequestError(
                    f"search {stepwise.method!r} cannot be combined with {asked[0]}; choose one",
                    param="search",
                )
            request = self.generator.prepare(prompt, params, best_of)
            return Plan(request, name, aggregation, drop_logprobs, None, n, None, stepwise)
        waves = self._adaptive(name, best_of, adaptive, adaptive_options or {})
        pruning = self._prune(best_of, prune, prune_options or {})
        if waves is not None and pruning is not None:
            if adaptive is None:  # the server's default gives way to what the request asked
                waves = None
            elif prune is None:
                pruning = None
            else:
                raise InvalidRequestError(
                    "adaptive and prune cannot be combined in one request; choose one",
                    param="prune",
                )
        if (
            pruning is None
            and waves is None
            and spec.needs_verifier
            and self.policy.score_while_decoding
            and hasattr(self.generator, "stream")
        ):
            pruning = Prune(rounds=0)  # no pruning: the per-candidate path, for its scoring
        request = self.generator.prepare(prompt, params, best_of)
        return Plan(request, name, aggregation, drop_logprobs, waves, n, pruning, None, checks)

    def _tests(self, tests: str | Sequence[str] | None, timeout_s: float | None) -> Tests | None:
        if tests is None:
            return None
        cap = self.policy.tests_timeout_s
        if timeout_s is not None and timeout_s > cap:
            raise InvalidRequestError(
                f"tests_timeout_s ({timeout_s:g}) exceeds this server's limit ({cap:g})",
                param="tests_timeout_s",
            )
        wall = timeout_s if timeout_s is not None else cap
        snippets = tuple(split_tests(tests))
        if not snippets:
            raise InvalidRequestError("tests must not be empty", param="tests")
        limits = Limits(cpu_s=wall, wall_s=wall,
                        memory_bytes=self.policy.tests_memory_mb << 20)
        return Tests(snippets, limits)

    def _step_search(
        self, best_of: int, asked: str | None, options: dict[str, float | int | None],
        params: SamplingParams,
    ) -> StepSearch | None:
        method = asked if asked is not None else self.policy.search
        if method not in METHODS:
            raise InvalidRequestError(
                f"unknown search {method!r}; valid searches: {', '.join(METHODS)}",
                param="search",
            )
        if method == "best_of_n":
            return None
        if self.scorer is None:
            raise InvalidRequestError(
                f"search {method!r} needs a step scorer, and this server has none loaded; start "
                "it with --verifier (a PRM, an ORM, task:<world> or py:module:function)",
                param="search",
            )
        if not hasattr(self.generator, "extend"):
            raise InvalidRequestError(
                f"search {method!r} needs a backend that continues candidates step by step; "
                "this one does not", param="search",
            )
        if params.logprobs is not None:
            raise InvalidRequestError(
                "logprobs are not returned by a step search; leave them out or use best_of_n",
                param="logprobs",
            )
        found = dataclasses.replace(self.policy.search_params, method=method, **_given(options))
        try:
            check_search(method, best_of, found.width)
        except ValueError as exc:
            raise InvalidRequestError(str(exc), param="beam_width") from None
        return found

    def _prune(
        self, best_of: int, asked: bool | None, options: dict[str, float | int | None]
    ) -> Prune | None:
        if asked is False or (asked is None and not self.policy.prune) or best_of == 1:
            return None
        if self.scorer is None:
            raise InvalidRequestError(
                "prune needs a verifier to rank the partial candidates, and this server has "
                "none loaded; start it with --verifier",
                param="prune",
            )
        if not hasattr(self.generator, "stream"):
            raise InvalidRequestError(
                "prune needs a backend that follows candidates one by one; this one does not",
                param="prune",
            )
        return dataclasses.replace(self.policy.prune_params, **_given(options))

    def _adaptive(
        self,
        selector: str,
        best_of: int,
        asked: bool | None,
        options: dict[str, float | int | None],
    ) -> Adaptive | None:
        if asked is False or (asked is None and not self.policy.adaptive):
            return None
        if selector not in ADAPTIVE_SELECTORS:
            if asked is None:  # the server's default, for a selector it cannot serve: fixed N
                return None
            raise InvalidRequestError(
                f"adaptive sampling needs a selector with a stopping rule "
                f"({', '.join(ADAPTIVE_SELECTORS)}); {selector!r} has none",
                param="adaptive",
            )
        if best_of == 1:  # nothing to save
            return None
        return dataclasses.replace(self.policy.adaptive_params, **_given(options))

    async def run(self, plan: Plan) -> BestOfNResult:
        if plan.step_search is not None:
            return await run_step_search(self, plan, plan.step_search)
        if plan.prune is not None:
            return await self._run_pruned(plan, plan.prune)
        spec = SELECTORS[plan.selector]
        prompt = plan.request.prompt
        candidates: list[Candidate] = []
        votes = Votes(self.policy.answer_rules)
        verifier_scores: list[float] | None = [] if spec.needs_verifier else None
        step_scores: list[list[float]] | None = None
        wave_of: list[int] = []
        prompt_tokens = 0  # as the generator counts it (an upstream reports its own)
        generate_s = score_s = 0.0
        sizes = [plan.best_of] if plan.adaptive is None else wave_sizes(
            plan.best_of, plan.adaptive, plan.choices
        )
        stopped_early = False
        reports: list[TestReport] = []
        for wave, size in enumerate(sizes):
            t0 = time.perf_counter()
            request = plan.request if plan.adaptive is None else self._wave(plan, wave, size)
            generation = await self.generator.generate(request)
            t1 = time.perf_counter()
            if wave == 0:  # the prompt counts once, however many waves read it
                prompt_tokens = generation.prompt_tokens
            drawn = generation.candidates
            if plan.drop_logprobs:
                drawn = tuple(dataclasses.replace(c, logprobs=None) for c in drawn)
            candidates.extend(drawn)
            wave_of.extend([wave] * len(drawn))
            if verifier_scores is not None:
                scores, steps = await self.score(prompt, drawn, plan.aggregation)
                verifier_scores.extend(scores)
                if steps is not None:
                    step_scores = (step_scores or []) + steps
            if plan.tests is not None:
                reports.extend(await self.tests.check(plan.tests, drawn))
            t2 = time.perf_counter()
            generate_s += t1 - t0
            score_s += t2 - t1
            if plan.tests is None:
                await votes.add([c.text for c in drawn])
            answers = votes.answers if plan.tests is None else [signature(r) for r in reports]
            if (
                plan.adaptive is not None
                and wave < len(sizes) - 1
                and (any(r.fraction == 1.0 for r in reports)  # a program passes everything
                     or should_stop(plan.selector, answers, verifier_scores, plan.adaptive))
            ):
                stopped_early = True
                break

        votes.report()
        selection = spec.fn(SelectorInput(candidates, answers, verifier_scores))
        order, scores = list(selection.order), list(selection.scores)
        if plan.tests is not None:  # the tests first; ties in the selector's order
            order, scores = rank(order, reports), [r.fraction for r in reports]
        tokens = self.record(plan, candidates, prompt_tokens, generate_s, score_s)
        skipped = plan.best_of - len(candidates)
        if skipped:
            self.metrics.candidates_not_drawn.inc(skipped)
            self.metrics.tokens_not_generated.inc(skipped * tokens / len(candidates))  # estimate
        return BestOfNResult(
            candidates=tuple(candidates),
            answers=tuple(answers),
            scores=tuple(scores),
            verifier_scores=tuple(verifier_scores) if verifier_scores is not None else None,
            order=tuple(order),
            selector=plan.selector,
            aggregation=plan.aggregation,
            prompt_tokens=prompt_tokens,
            timings={"generate_s": generate_s, "score_s": score_s},
            step_scores=None if step_scores is None else tuple(map(tuple, step_scores)),
            search=Search(
                mode="fixed" if plan.adaptive is None else "adaptive",
                cap=plan.best_of,
                waves=len(set(wave_of)),
                stopped_early=stopped_early,
                wave_of=tuple(wave_of),
            ),
            tests=tuple(reports) if plan.tests is not None else None,
        )

    async def _run_pruned(self, plan: Plan, prune: Prune) -> BestOfNResult:
        """Every candidate started, the weakest aborted at step boundaries (``search.prune``);
        the survivors and those that ended early are selected as usual."""
        spec = SELECTORS[plan.selector]
        prompt = plan.request.prompt
        generator = cast(StreamingGenerator, self.generator)

        async def score(candidates: Sequence[Candidate]) -> Scores:
            return await self.score(prompt, candidates, plan.aggregation)

        t0 = time.perf_counter()
        drawn = await draw_pruned(
            lambda i: generator.stream(plan.request, i),
            plan.best_of,
            prune,
            plan.choices,
            score,
            score_finished=spec.needs_verifier,
        )
        t1 = time.perf_counter()
        candidates = list(drawn.candidates)
        if plan.drop_logprobs:
            candidates = [dataclasses.replace(c, logprobs=None) for c in candidates]
        kept = [i for i in range(len(candidates)) if i not in drawn.pruned]
        votes = Votes(self.policy.answer_rules)
        await votes.add([candidates[i].text for i in kept])
        votes.report()
        answers: list[str | None] = [None] * len(candidates)  # a pruned candidate has none
        for i, key in zip(kept, votes.answers, strict=True):
            answers[i] = key
        verifier = drawn.verifier_scores
        selection = spec.fn(
            SelectorInput(
                [candidates[i] for i in kept],
                votes.answers,
                [verifier[i] for i in kept] if verifier is not None else None,
            )
        )
        scores = [0.0] * len(candidates)  # a pruned candidate is never chosen
        for j, i in enumerate(kept):
            scores[i] = selection.scores[j]
        order = [kept[j] for j in selection.order] + sorted(drawn.pruned)

        # in-process the prompt was counted when prepared; an upstream counts it in its streams
        prompt_tokens = plan.request.prompt_tokens or drawn.prompt_tokens or 0
        self.record(plan, candidates, prompt_tokens, t1 - t0, drawn.exposed_score_s)
        if drawn.pruned:
            m = self.metrics
            m.candidates_pruned.inc(len(drawn.pruned))
            finished = [len(candidates[i].token_ids) for i in kept]
            mean = sum(finished) / len(finished) if finished else 0.0
            m.tokens_not_generated.inc(
                sum(max(0.0, mean - len(candidates[i].token_ids)) for i in drawn.pruned)
            )
        return BestOfNResult(
            candidates=tuple(candidates),
            answers=tuple(answers),
            scores=tuple(scores),
            verifier_scores=verifier,
            order=tuple(order),
            selector=plan.selector,
            aggregation=plan.aggregation,
            prompt_tokens=prompt_tokens,
            timings={"generate_s": t1 - t0, "score_s": drawn.exposed_score_s},
            step_scores=drawn.step_scores,
            search=Search(
                mode="prune" if prune.rounds else "fixed",
                cap=plan.best_of,
                wave_of=(0,) * len(candidates),
                pruned=tuple(sorted(drawn.pruned)),
                rounds=drawn.rounds,
            ),
        )

    def record(
        self,
        plan: Plan,
        candidates: Sequence[Candidate],
        prompt_tokens: int,
        generate_s: float,
        score_s: float,
        generated: int | None = None,
    ) -> int:
        """Every request's metrics, however its candidates were drawn; its completion tokens
        (``generated``, where more were made than the candidates hold)."""
        m = self.metrics
        tokens = sum(len(c.token_ids) for c in candidates) if generated is None else generated
        m.candidates.labels(plan.selector).inc(len(candidates))
        m.prompt_tokens.inc(prompt_tokens)
        m.completion_tokens.inc(tokens)
        m.generation_duration.observe(generate_s)
        if SELECTORS[plan.selector].needs_verifier:
            m.scoring_duration.observe(score_s)
        return tokens

    def _wave(self, plan: Plan, wave: int, size: int) -> PreparedRequest:
        """Wave ``wave``'s request: ``size`` candidates, and its own seed where the client
        gave one (the same seed would redraw the same candidates)."""
        params = plan.request.params
        if params.seed is not None and wave:
            params = dataclasses.replace(params, seed=(params.seed + WAVE_SEED_STRIDE * wave))
        return self.generator.prepare(plan.request.prompt, params, size)

    async def score(
        self, prompt: Prompt, candidates: Sequence[Candidate], aggregation: str | None
    ) -> Scores:
        """The verifier's score of each candidate, and a PRM's step scores (None for an ORM)."""
        assert self.scorer is not None
        try:
            if self.scorer.kind == "prm":  # keep the steps' scores: the response shows them
                prm = cast(StepScorer, self.scorer)
                steps = await prm.step_scores(prompt, candidates)
                how = aggregation or prm.aggregation
                return [aggregate(s, how) for s in steps], steps
            return await self.scorer.score(prompt, candidates, aggregation), None
        except BonError:
            raise
        except Exception as exc:
            raise ServiceUnavailableError(f"the verifier failed: {exc}") from exc
