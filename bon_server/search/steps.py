"""Search by steps: beam search, DVTS and particle filtering over a step scorer.

Best-of-N draws whole candidates and picks one. These methods grow candidates one step at a
time (a step ends at the step separator: a line for the worlds, a blank line for math
models) and let a step scorer decide which partial solutions are worth growing:

    beam       N beams alive. Each step the best N/M unfinished beams are kept and each is
               expanded M ways (Snell et al. 2024; search-and-learn's ``beam_search``).
    dvts       N/M subtrees kept apart (diverse verifier tree search, Beeching et al. 2024):
               each subtree keeps only its own best beam and expands it M ways, so one
               strong prefix cannot take over the whole budget.
    particles  N particles, each grown one step at a time; after each step all N are drawn
               again, with replacement, in proportion to softmax(score / temperature)
               (particle filtering, Puri et al. 2025; its_hub's ``ParticleFiltering``).

A beam ends at EOS or its token budget; at the step limit the last expansion has no stop,
so every beam finishes. The final pick is the request's selector over the finished beams
(the pipeline's, not this module's).

This module knows nothing of engines or HTTP: it is given ``expand`` (one call per step
for every live beam: the pipeline makes it ONE engine call, the prefixes cached, or one
upstream request) and ``judge`` (the step scorer's score of each beam's text so far).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

from ..types import FinishReason, Piece

METHODS = ("best_of_n", "beam", "dvts", "particles")
STEP_METHODS = METHODS[1:]


@dataclass(frozen=True, slots=True)
class StepSearch:
    """One request's search: the method, M, the step limit, the resampling temperature."""

    method: str = "beam"
    width: int = 4  # M: expansions per kept beam (beam), subtree width (dvts)
    max_steps: int = 16
    temperature: float = 0.1  # particles: softmax(score / temperature)


@dataclass(frozen=True, slots=True)
class Beam:
    """A partial (or finished) solution: its steps, and the scorer's score after each."""

    steps: tuple[str, ...] = ()
    token_ids: tuple[int, ...] = ()
    logprob: float | None = 0.0
    scores: tuple[float, ...] = ()  # the step scorer's score of the beam after each step
    done: bool = False
    finish_reason: FinishReason = "stop"
    tree: int = 0  # dvts: the subtree it grows in

    @property
    def text(self) -> str:
        return "".join(self.steps)

    @property
    def score(self) -> float:
        return self.scores[-1] if self.scores else 0.0

    def grow(self, piece: Piece) -> Beam:
        logprob = None if self.logprob is None or piece.logprob is None else (
            self.logprob + piece.logprob)
        return replace(
            self,
            steps=self.steps + (piece.text,),
            token_ids=self.token_ids + piece.token_ids,
            logprob=logprob,
            done=piece.ended,
            finish_reason=piece.finish_reason,
        )


# expand([(beam, k), ...], final) -> for each pair, k one-step continuations of the beam
# (final: no stop at the separator, every continuation runs to its end)
Expand = Callable[[Sequence[tuple[Beam, int]], bool], Awaitable[list[list[Piece]]]]
# judge(beams) -> the step scorer's score of each beam's text so far
Judge = Callable[[Sequence[Beam]], Awaitable[list[float]]]


@dataclass(slots=True)
class Searched:
    """What a search found, and what it cost."""

    beams: list[Beam] = field(default_factory=list)  # the finished beams, for the selector
    steps: int = 0  # expansion rounds taken
    expanded: int = 0  # one-step continuations drawn, all beams, all steps
    dropped: int = 0  # partial beams given up (not kept, or not resampled)
    tokens: int = 0  # every generated token, kept or dropped


def check_search(method: str, n: int, width: int) -> None:
    """Raise ValueError (the pipeline's 400) for a search these numbers cannot run."""
    if method not in METHODS:
        raise ValueError(f"unknown search {method!r}; valid searches: {', '.join(METHODS)}")
    if method in ("beam", "dvts") and (width < 1 or width > n or n % width):
        raise ValueError(
            f"beam_width ({width}) must divide best_of ({n}): {method} keeps "
            f"best_of / beam_width beams and expands each beam_width ways"
        )


async def run_search(
    search: StepSearch, n: int, expand: Expand, judge: Judge, rng: random.Random
) -> Searched:
    check_search(search.method, n, search.width)
    run = {"beam": _beam, "dvts": _dvts, "particles": _particles}[search.method]
    return await run(search, n, expand, judge, rng)


async def _step(
    out: Searched, search: StepSearch, asks: Sequence[tuple[Beam, int]], expand: Expand,
    judge: Judge,
) -> list[Beam]:
    """One round: expand each (beam, k) k ways, score every child; children in order."""
    final = out.steps >= search.max_steps - 1
    pieces = await expand(asks, final)
    children = [
        beam.grow(piece) for (beam, _), drawn in zip(asks, pieces, strict=True) for piece in drawn
    ]
    out.steps += 1
    out.expanded += len(children)
    out.tokens += sum(len(p.token_ids) for drawn in pieces for p in drawn)
    if final:  # the step limit: whatever did not end is cut there
        children = [c if c.done else replace(c, done=True, finish_reason="length")
                    for c in children]
    scores = await judge(children) if children else []
    return [replace(c, scores=c.scores + (s,)) for c, s in zip(children, scores, strict=True)]


def _best(beams: Sequence[Beam], k: int) -> list[Beam]:
    """The ``k`` highest-scoring beams; ties keep the earlier one (stable)."""
    return sorted(beams, key=lambda b: -b.score)[:k]


async def _beam(search: StepSearch, n: int, expand: Expand, judge: Judge,
                rng: random.Random) -> Searched:
    out = Searched()
    m = search.width
    asks: list[tuple[Beam, int]] = [(Beam(), n)]  # the first step: N ways from the prompt
    while asks:
        children = await _step(out, search, asks, expand, judge)
        live = [c for c in children if not c.done]
        out.beams.extend(c for c in children if c.done)
        room = n - len(out.beams)  # finished beams use up the budget
        keep = _best(live, -(-room // m)) if room > 0 else []
        out.dropped += len(live) - len(keep)
        asks = [(b, m) for b in keep]
        if asks and sum(k for _, k in asks) > room:  # the last kept beam expands fewer ways
            beam, _ = asks[-1]
            asks[-1] = (beam, room - m * (len(asks) - 1))
    return out


async def _dvts(search: StepSearch, n: int, expand: Expand, judge: Judge,
                rng: random.Random) -> Searched:
    out = Searched()
    m = search.width
    trees = n // m
    # the first step: M ways per subtree, all from the prompt
    asks: list[tuple[Beam, int]] = [(Beam(tree=t), m) for t in range(trees)]
    while asks:
        children = await _step(out, search, asks, expand, judge)
        asks = []
        for t in range(trees):
            mine = [c for c in children if c.tree == t]
            if not mine:
                continue
            out.beams.extend(c for c in mine if c.done)
            live = [c for c in mine if not c.done]
            best = _best(mine, 1)[0]
            if best.done or not live:  # the subtree's best path has ended: so has the subtree
                out.dropped += len(live)
                continue
            keep = _best(live, 1)[0]
            out.dropped += len(live) - 1
            asks.append((keep, m))
    return out


def resample(scores: Sequence[float], count: int, temperature: float,
             rng: random.Random) -> list[int]:
    """``count`` indices drawn with replacement, each in proportion to softmax(score / T)."""
    t = max(temperature, 1e-6)
    top = max(scores)
    weights = [math.exp((s - top) / t) for s in scores]
    return rng.choices(range(len(scores)), weights=weights, k=count)


async def _particles(search: StepSearch, n: int, expand: Expand, judge: Judge,
                     rng: random.Random) -> Searched:
    out = Searched()
    particles = await _step(out, search, [(Beam(), n)], expand, judge)
    while True:
        if all(p.done for p in particles):
            break
        # resample the population by score; an ended particle can be drawn again (it keeps
        # its place and its score), a live one is grown one more step
        drawn = Counter(resample([p.score for p in particles], n, search.temperature, rng))
        out.dropped += sum(1 for i, p in enumerate(particles) if not p.done and i not in drawn)
        # a particle drawn k times is ONE ask for k continuations (its prefix computed once,
        # and a seeded request's copies still differ)
        kept = [particles[i] for i, k in sorted(drawn.items()) if particles[i].done
                for _ in range(k)]
        asks = [(particles[i], k) for i, k in sorted(drawn.items()) if not particles[i].done]
        particles = kept + await _step(out, search, asks, expand, judge)
    out.beams = particles
    return out
