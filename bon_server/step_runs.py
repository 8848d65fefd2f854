"""A step search request, run: beam, DVTS or particles (``search.steps``) on the pipeline's
generator and scorer, then the request's selector over the finished beams.

Each step is one ``extend`` call for every live beam (one round of engine requests, or one
upstream request); each beam's text is judged once by the step scorer (a repeat, as particles
make, is looked up), and its last judgement is its verifier score.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from .generators.base import StepGenerator
from .search import SEED_STRIDE, Beam, StepSearch, run_search
from .selectors import SELECTORS, SelectorInput
from .types import BestOfNResult, Candidate, Extension, Piece, Search
from .votes import Votes

if TYPE_CHECKING:
    from .pipeline import BestOfN, Plan

async def run_step_search(bon: BestOfN, plan: Plan, search: StepSearch) -> BestOfNResult:
    """Beam, DVTS or particles (``search.steps``): each step one ``extend`` call for every
    live beam; the finished beams are then selected like any candidates."""
    spec = SELECTORS[plan.selector]
    request = plan.request
    prompt = request.prompt
    generator = cast(StepGenerator, bon.generator)
    separator = bon.policy.step_separator
    seed = request.params.seed
    draws = itertools.count()  # a seeded request gives each expansion its own seed
    judged: dict[str, tuple[float, list[float] | None]] = {}
    timings = {"generate_s": 0.0, "score_s": 0.0}

    async def expand(asks: Sequence[tuple[Beam, int]], final: bool) -> list[list[Piece]]:
        t0 = time.perf_counter()
        extensions = [
            Extension(beam.token_ids, k,
                      None if seed is None else seed + SEED_STRIDE * next(draws))
            for beam, k in asks
        ]
        try:
            return await generator.extend(request, extensions, None if final else separator)
        finally:
            timings["generate_s"] += time.perf_counter() - t0

    async def judge(beams: Sequence[Beam]) -> list[float]:
        t0 = time.perf_counter()
        fresh = list(dict.fromkeys(b.text for b in beams if b.text not in judged))
        if fresh:
            texts = [Candidate(t, (), None, "stop") for t in fresh]
            scores, steps = await bon.score(prompt, texts, plan.aggregation)
            for i, text in enumerate(fresh):
                judged[text] = (scores[i], steps[i] if steps is not None else None)
        timings["score_s"] += time.perf_counter() - t0
        return [judged[b.text][0] for b in beams]

    rng = random.Random(seed)
    searched = await run_search(search, plan.best_of, expand, judge, rng)
    candidates = [Candidate(b.text, b.token_ids, b.logprob, b.finish_reason)
                  for b in searched.beams]
    votes = Votes(bon.policy.answer_rules)
    await votes.add([c.text for c in candidates])
    votes.report()
    verifier_scores = [judged[c.text][0] for c in candidates]
    steps = [judged[c.text][1] for c in candidates]
    step_scores = None if any(s is None for s in steps) else tuple(map(tuple, steps))
    selection = spec.fn(SelectorInput(
        candidates, votes.answers, verifier_scores if spec.needs_verifier else None))
    bon.record(plan, candidates, request.prompt_tokens, timings["generate_s"],
                 timings["score_s"], generated=searched.tokens)
    return BestOfNResult(
        candidates=tuple(candidates),
        answers=tuple(votes.answers),
        scores=tuple(selection.scores),
        verifier_scores=tuple(verifier_scores),
        order=tuple(selection.order),
        selector=plan.selector,
        aggregation=plan.aggregation,
        prompt_tokens=request.prompt_tokens,
        timings=timings,
        step_scores=step_scores,  # type: ignore[arg-type]
        search=Search(
            mode=search.method, cap=plan.best_of, wave_of=(0,) * len(candidates),
            steps=searched.steps, expanded=searched.expanded, dropped=searched.dropped,
            width=search.width if search.method != "particles" else None,
        ),
        generated_tokens=searched.tokens,
    )

