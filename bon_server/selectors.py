"""Selectors: given the candidates, their verifier scores and extracted answers, rank them.

The answers are ``answers.AnswerGroups``' keys: equal keys are one vote (under ``math``, what
math-verify calls equal), and the voting selectors count them with ``answers.tally``.

Each selector returns a ``Selection``: the candidate indices best first, and per
candidate the number it ranked by (that number is what the response reports as
``score``). Ties always break towards the earlier candidate, so a selection is
a pure function of its inputs.

    verifier            argmax of the verifier score
    weighted_majority   sum of verifier scores per extracted answer (Li et al. 2023)
    majority            self-consistency: most frequent extracted answer, no verifier
    logprob             mean token log-probability (the legacy OpenAI `best_of` rule)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .answers import tally
from .types import Candidate


@dataclass(frozen=True, slots=True)
class Selection:
    order: list[int]
    scores: list[float]


@dataclass(frozen=True, slots=True)
class SelectorInput:
    candidates: Sequence[Candidate]
    answers: Sequence[str | None]
    verifier_scores: Sequence[float] | None = None


def _rank(keys: Sequence[tuple[float, ...]]) -> list[int]:
    return sorted(range(len(keys)), key=lambda i: (*(-k for k in keys[i]), i))


def verifier(inp: SelectorInput) -> Selection:
    assert inp.verifier_scores is not None
    scores = list(inp.verifier_scores)
    return Selection(_rank([(s,) for s in scores]), scores)


def _grouped(answers: Sequence[str | None], weights: Sequence[float]) -> list[float]:
    """Each candidate's share of the total weight held by its answer; no answer, no share."""
    totals = tally(answers, weights)
    whole = sum(weights) or 1.0
    return [totals[a] / whole if a is not None else 0.0 for a in answers]


def weighted_majority(inp: SelectorInput) -> Selection:
    assert inp.verifier_scores is not None
    shares = _grouped(inp.answers, inp.verifier_scores)
    # within an answer group the better-verified candidate represents it
    order = _rank([(s, v) for s, v in zip(shares, inp.verifier_scores, strict=True)])
    return Selection(order, shares)


def majority(inp: SelectorInput) -> Selection:
    shares = _grouped(inp.answers, [1.0] * len(inp.answers))
    return Selection(_rank([(s,) for s in shares]), shares)


def logprob(inp: SelectorInput) -> Selection:
    means = [c.mean_logprob for c in inp.candidates]
    if any(m is None for m in means):
        raise ValueError("the logprob selector needs candidates with logprobs")
    scores = [float(m) for m in means]  # type: ignore[arg-type]
    return Selection(_rank([(s,) for s in scores]), scores)


@dataclass(frozen=True, slots=True)
class SelectorSpec:
    fn: Callable[[SelectorInput], Selection]
    needs_verifier: bool = False
    needs_logprobs: bool = False


SELECTORS: dict[str, SelectorSpec] = {
    "verifier": SelectorSpec(verifier, needs_verifier=True),
    "weighted_majority": SelectorSpec(weighted_majority, needs_verifier=True),
    "majority": SelectorSpec(majority),
    "logprob": SelectorSpec(logprob, needs_logprobs=True),
}


def check_selector(name: str) -> SelectorSpec:
    """The spec for ``name``; ValueError listing the valid names otherwise."""
    try:
        return SELECTORS[name]
    except KeyError:
        valid = ", ".join(SELECTORS)
        raise ValueError(f"unknown selector {name!r}; valid selectors: {valid}") from None
