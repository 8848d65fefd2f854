"""Stopping rules for adaptive sampling: is the selection settled after these candidates?

    majority            Adaptive-Consistency's Beta rule (Aggarwal et al. 2023): with v1 votes
                        for the leading answer and v2 for the runner-up, the posterior
                        Beta(v1 + 1, v2 + 1) on the leader's share of the two gives
                        P(the leader really is the more likely answer); stop once it reaches
                        ``confidence``. Three votes out of three give 0.94, three of four
                        0.81, four of six 0.77: each stops at the default 0.75.
    weighted_majority   the same rule on verifier-weighted votes (each answer's summed scores)
    verifier            stop once the best verifier score reaches ``threshold``

Every rule waits for ``min_candidates`` and the caller always stops at the cap
(``best_of``). ``logprob`` has no rule: a request for it is refused. The answers are
``answers.AnswerGroups``' keys, counted by ``answers.tally`` as the selectors count them, so
a rule stops on the groups the selector will vote over (under ``math``, math-verify's).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..answers import tally

ADAPTIVE_SELECTORS = ("majority", "weighted_majority", "verifier")
# a seeded request draws again (adaptive wave w, step search draw k) with seed + k * this
SEED_STRIDE = 1_000_003


@dataclass(frozen=True, slots=True)
class Adaptive:
    """Adaptive sampling's parameters (server flags ``--adaptive-*``, request ``adaptive_*``)."""

    # defaults chosen by ``verifier_training adaptive`` on the embedded arithmetic policy's
    # samples (README): half fixed N's tokens at cap 16 for -0.007 accuracy
    wave: int = 2  # candidates per wave after the first
    min_candidates: int = 3  # never stop before this many (the first wave draws them)
    confidence: float = 0.75  # majority rules: P(leader is the mode) needed to stop
    threshold: float = 0.9  # verifier rule: the best verifier score needed to stop


def wave_sizes(cap: int, params: Adaptive, n: int = 1) -> list[int]:
    """The waves' sizes: the first draws the minimum (at least ``n``), then ``wave`` at a
    time, the last cut to reach exactly ``cap``."""
    first = min(cap, max(params.min_candidates, params.wave, n))
    sizes = [first]
    while sum(sizes) < cap:
        sizes.append(min(params.wave, cap - sum(sizes)))
    return sizes


_GRID = (np.arange(4096) + 0.5) / 4096  # midpoints on (0, 1)


def beta_confidence(leader: float, runner_up: float) -> float:
    """P(X > 1/2) for X ~ Beta(leader + 1, runner_up + 1): how sure the leader leads.

    Votes may be fractional (weighted majority), so the integral is numeric (4096
    midpoints; for whole votes it matches the exact binomial sum to 1e-6, tested).
    """
    a, b = leader + 1.0, runner_up + 1.0
    log_pdf = (a - 1) * np.log(_GRID) + (b - 1) * np.log1p(-_GRID)
    pdf = np.exp(log_pdf - log_pdf.max())
    return float(pdf[_GRID > 0.5].sum() / pdf.sum())


def _votes(answers: Sequence[str | None], weights: Sequence[float]) -> list[float]:
    return sorted(tally(answers, weights).values(), reverse=True)


def should_stop(
    selector: str,
    answers: Sequence[str | None],
    verifier_scores: Sequence[float] | None,
    params: Adaptive,
) -> bool:
    """Whether the candidates so far settle ``selector``'s choice (the minimum is checked
    here; the cap by the caller)."""
    if len(answers) < params.min_candidates:
        return False
    if selector == "verifier":
        assert verifier_scores is not None
        return max(verifier_scores, default=-math.inf) >= params.threshold
    if selector == "weighted_majority":
        assert verifier_scores is not None
        votes = _votes(answers, verifier_scores)
    elif selector == "majority":
        votes = _votes(answers, [1.0] * len(answers))
    else:
        raise ValueError(f"no stopping rule for selector {selector!r}")
    if not votes:  # no answer extracted yet: nothing is settled
        return False
    runner_up = votes[1] if len(votes) > 1 else 0.0
    return beta_confidence(votes[0], runner_up) >= params.confidence
