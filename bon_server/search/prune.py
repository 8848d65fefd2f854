"""Verifier-guided pruning (Speculative Rejection, Sun et al. 2024): start every candidate,
score the live ones at step boundaries, abort the lowest in the engine, finish the rest.

Each candidate is its own engine request (``n = 1``; vLLM's prefix cache shares the
prompt), followed as it grows. A round waits until every live candidate has written
``every * round`` steps (a step is a finished line) or has ended, scores the unfinished
ones on their finished lines (a PRM scores those steps, an ORM that text), keeps the best
``keep`` share and cancels the others, which aborts them in the engine. Candidates that
end are scored at once, while the rest still decode, when the selector needs a verifier.

A pruned candidate is reported as the verifier judged it (its finished lines) with every
token it had made when it was cancelled: what it cost. (The abort lands within an engine
step of the cancel, so the engine may make a token or so more than is counted.)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

from ..types import Candidate, Progress

Scores = tuple[list[float], list[list[float]] | None]  # verifier scores, PRM step scores


@dataclass(frozen=True, slots=True)
class Prune:
    """Pruning's schedule (server flags ``--prune-*``, request ``prune_*``)."""

    every: int = 1  # steps between pruning rounds (a round at 1, 2, ... x every steps)
    keep: float = 0.5  # share of the unfinished candidates each round keeps
    rounds: int = 1  # pruning rounds (0: none; every candidate followed and scored as it ends)
    distinct: bool = False  # among equal scores, a prefix's first holder before its repeats


@dataclass(frozen=True, slots=True)
class Pruned:
    """Every started candidate in start order; the pruned ones partial."""

    candidates: tuple[Candidate, ...]
    pruned: frozenset[int]
    verifier_scores: tuple[float, ...] | None  # finished: final score; pruned: at pruning
    step_scores: tuple[tuple[float, ...], ...] | None
    rounds: int  # rounds that pruned something
    exposed_score_s: float  # scoring time not hidden behind decoding (after the last token)
    prompt_tokens: int | None = None  # where the streams told it (an upstream's usage)


def finished_lines(text: str) -> str:
    """The text up to its last newline: the steps a partial candidate has finished."""
    cut = text.rfind("\n")
    return text[: cut + 1] if cut >= 0 else ""


def _steps(p: Progress | None) -> int:
    return 0 if p is None else sum(1 for line in p.text.split("\n")[:-1] if line.strip())


async def draw_pruned(
    stream: Callable[[int], AsyncIterator[Progress]],
    best_of: int,
    params: Prune,
    needed: int,
    score: Callable[[Sequence[Candidate]], Awaitable[Scores]],
    score_finished: bool,
) -> Pruned:
    """Start ``best_of`` candidates (``stream(i)`` follows candidate ``i``), prune on
    ``params``' schedule, keep at least ``needed`` (the client's n), return them all."""
    latest: list[Progress | None] = [None] * best_of
    changed = asyncio.Event()
    final_scores: dict[int, asyncio.Task[Scores]] = {}

    async def follow(i: int) -> None:
        async for progress in stream(i):
            latest[i] = progress
            if progress.done and score_finished:
                final_scores[i] = asyncio.ensure_future(score([progress.candidate]))
            changed.set()

    tasks = [asyncio.ensure_future(follow(i)) for i in range(best_of)]
    for t in tasks:
        t.add_done_callback(lambda _: changed.set())
    live = set(range(best_of))
    pruned: dict[int, tuple[Candidate, float, list[float] | None]] = {}
    rounds = 0

    def failed() -> None:
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]

    def unfinished() -> list[int]:
        return sorted(i for i in live if not tasks[i].done())

    try:
        for r in range(1, params.rounds + 1):
            target = params.every * r
            while True:  # until every live candidate has ``target`` steps or has ended
                changed.clear()
                failed()
                if all(_steps(latest[i]) >= target for i in unfinished()):
                    break
                await changed.wait()
            racing = unfinished()
            done = len(live) - len(racing)
            keep = max(math.ceil(params.keep * len(racing)), needed - done, 0)
            if keep >= len(racing):
                continue
            partial = [_partial(latest[i]) for i in racing]
            scores, steps = await score(partial)
            order = prune_order(scores, racing,
                                [c.text for c in partial] if params.distinct else None)
            for j in order[keep:]:
                i = racing[j]
                if tasks[i].done():  # it ended while being scored: it stays
                    continue
                tasks[i].cancel()
                live.discard(i)
                at_cancel = latest[i].candidate  # type: ignore[union-attr]
                cost = dataclasses.replace(partial[j], token_ids=at_cancel.token_ids)
                pruned[i] = (cost, scores[j], steps[j] if steps else None)
            rounds += 1
        await asyncio.gather(*(tasks[i] for i in live))
        decoded = time.perf_counter()
        for t in final_scores.values():
            await t
        exposed = time.perf_counter() - decoded
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for t in final_scores.values():
            if not t.done():
                t.cancel()

    candidates, verifier, step_scores = [], [], []
    for i in range(best_of):
        if i in pruned:
            cand, s, steps_i = pruned[i]
            candidates.append(cand)
            verifier.append(s)
            step_scores.append(steps_i or [])
            continue
        progress = latest[i]
        assert progress is not None and progress.done
        candidates.append(progress.candidate)
        if score_finished:
            s_list, steps = await final_scores[i]
            verifier.append(s_list[0])
            step_scores.append(steps[0] if steps else [])
    have_steps = score_finished and any(step_scores)
    return Pruned(
        candidates=tuple(candidates),
        pruned=frozenset(pruned),
        verifier_scores=tuple(verifier) if score_finished else None,
        step_scores=tuple(map(tuple, step_scores)) if have_steps else None,
        rounds=rounds,
        exposed_score_s=exposed,
        prompt_tokens=next((p.prompt_tokens for p in latest if p and p.prompt_tokens), None),
    )


def prune_order(scores: Sequence[float], starts: Sequence[int],
                texts: Sequence[str] | None = None) -> list[int]:
    """Positions of ``scores`` best first, ties to the earlier start; with ``texts``, among
    equal scores every text's first holder goes ahead of the repeats (a repeated prefix
    scores the same and opens no new path: where the verifier cannot separate prefixes,
    keep as many different ones as it can). The replay (``verifier_training prune``) ranks
    with this too."""
    order = sorted(range(len(scores)), key=lambda j: (-scores[j], starts[j]))
    if texts is None:
        return order
    seen: set[str] = set()
    repeat = {}
    for j in order:
        repeat[j] = texts[j] in seen
        seen.add(texts[j])
    return sorted(order, key=lambda j: (-scores[j], repeat[j], starts[j]))


def _partial(progress: Progress | None) -> Candidate:
    """A live candidate as the verifier sees it: its finished lines as text, and every token
    it has so far (what it cost)."""
    if progress is None:
        return Candidate(text="", token_ids=(), cumulative_logprob=None, finish_reason="length")
    c = progress.candidate
    return Candidate(
        text=finished_lines(c.text),
        token_ids=c.token_ids,
        cumulative_logprob=c.cumulative_logprob,
        finish_reason="length",
    )
