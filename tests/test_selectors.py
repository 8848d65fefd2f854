"""Selectors on hand-made candidates: ranking, reported scores, tie-breaking, registry."""

from __future__ import annotations

import pytest

from bon_server.selectors import (
    SELECTORS,
    SelectorInput,
    check_selector,
    logprob,
    majority,
    verifier,
    weighted_majority,
)
from bon_server.types import Candidate


def cand(text: str = "x", n_tokens: int = 1, cumulative: float | None = None) -> Candidate:
    return Candidate(
        text=text,
        token_ids=tuple(range(n_tokens)),
        cumulative_logprob=cumulative,
        finish_reason="stop",
    )


def cands(k: int) -> list[Candidate]:
    return [cand(str(i)) for i in range(k)]


# ------------------------------------------------------------------ verifier


def test_verifier_ranks_by_score_and_reports_it():
    scores = [0.2, 0.9, 0.5, 0.1]
    sel = verifier(SelectorInput(cands(4), [None] * 4, scores))
    assert sel.order == [1, 2, 0, 3]
    assert sel.scores == scores


def test_verifier_ties_break_towards_earlier_index():
    sel = verifier(SelectorInput(cands(4), [None] * 4, [0.3, 0.7, 0.3, 0.7]))
    assert sel.order == [1, 3, 0, 2]


def test_verifier_ignores_answers():
    sel = verifier(SelectorInput(cands(3), ["1", "1", "2"], [0.1, 0.2, 0.9]))
    assert sel.order == [2, 1, 0]


# ------------------------------------------------------------------ majority


def test_majority_vote_shares():
    answers = ["5", "7", "5", "7", "5", "9"]
    sel = majority(SelectorInput(cands(6), answers))
    assert sel.scores == pytest.approx([3 / 6, 2 / 6, 3 / 6, 2 / 6, 3 / 6, 1 / 6])
    assert sel.order == [0, 2, 4, 1, 3, 5]


def test_majority_no_answer_scores_zero_and_still_counts_in_the_total():
    answers = [None, "4", None, None, "4"]
    sel = majority(SelectorInput(cands(5), answers))
    # three unanswered candidates: no share for them, but they dilute the others
    assert sel.scores == pytest.approx([0.0, 2 / 5, 0.0, 0.0, 2 / 5])
    assert sel.order == [1, 4, 0, 2, 3]


def test_majority_all_unanswered_keeps_generation_order():
    sel = majority(SelectorInput(cands(3), [None, None, None]))
    assert sel.scores == [0.0, 0.0, 0.0]
    assert sel.order == [0, 1, 2]


def test_majority_tie_between_groups_goes_to_earlier_candidate():
    sel = majority(SelectorInput(cands(4), ["b", "a", "a", "b"]))
    assert sel.scores == pytest.approx([0.5, 0.5, 0.5, 0.5])
    assert sel.order == [0, 1, 2, 3]


def test_majority_needs_no_verifier_scores():
    assert SELECTORS["majority"].needs_verifier is False
    sel = majority(SelectorInput(cands(2), ["1", "2"], verifier_scores=None))
    assert sel.order == [0, 1]


# ------------------------------------------------------------------ weighted_majority


def test_weighted_majority_sums_verifier_scores_per_answer():
    # "7" has more votes, but "5" has more verifier mass: 0.9 + 0.8 = 1.7 vs 3 * 0.2 = 0.6
    answers = ["7", "5", "7", "5", "7"]
    v = [0.2, 0.8, 0.2, 0.9, 0.2]
    sel = weighted_majority(SelectorInput(cands(5), answers, v))
    total = sum(v)
    assert sel.scores == pytest.approx(
        [0.6 / total, 1.7 / total, 0.6 / total, 1.7 / total, 0.6 / total]
    )
    # the best-verified member of the winning group comes first
    assert sel.order[:2] == [3, 1]
    assert sel.order == [3, 1, 0, 2, 4]


def test_weighted_majority_no_answer_scores_zero():
    sel = weighted_majority(SelectorInput(cands(3), [None, "1", "1"], [0.99, 0.1, 0.2]))
    assert sel.scores[0] == 0.0
    assert sel.order == [2, 1, 0]


def test_weighted_majority_all_zero_scores_does_not_divide_by_zero():
    sel = weighted_majority(SelectorInput(cands(2), ["1", "2"], [0.0, 0.0]))
    assert sel.scores == [0.0, 0.0]
    assert sel.order == [0, 1]


def test_weighted_majority_ties_break_towards_earlier_index():
    sel = weighted_majority(SelectorInput(cands(4), ["a", "b", "a", "b"], [0.5, 0.5, 0.5, 0.5]))
    assert sel.order == [0, 1, 2, 3]


# ------------------------------------------------------------------ logprob


def test_logprob_ranks_by_mean_token_logprob():
    candidates = [
        cand("a", n_tokens=10, cumulative=-5.0),  # mean -0.5
        cand("b", n_tokens=2, cumulative=-2.0),  # mean -1.0, though the largest cumulative
        cand("c", n_tokens=4, cumulative=-0.4),  # mean -0.1
    ]
    sel = logprob(SelectorInput(candidates, [None] * 3))
    assert sel.scores == pytest.approx([-0.5, -1.0, -0.1])
    assert sel.order == [2, 0, 1]


def test_logprob_empty_completion_does_not_divide_by_zero():
    sel = logprob(SelectorInput([cand("", n_tokens=0, cumulative=0.0)], [None]))
    assert sel.scores == [0.0]


def test_logprob_ties_break_towards_earlier_index():
    candidates = [cand(n_tokens=2, cumulative=-1.0), cand(n_tokens=4, cumulative=-2.0)]
    assert logprob(SelectorInput(candidates, [None, None])).order == [0, 1]


def test_logprob_without_logprobs_raises():
    candidates = [cand(n_tokens=2, cumulative=-1.0), cand(n_tokens=2, cumulative=None)]
    with pytest.raises(ValueError, match="logprobs"):
        logprob(SelectorInput(candidates, [None, None]))


# ------------------------------------------------------------------ registry


def test_registry_flags():
    assert SELECTORS["verifier"].needs_verifier
    assert SELECTORS["weighted_majority"].needs_verifier
    assert not SELECTORS["logprob"].needs_verifier
    assert SELECTORS["logprob"].needs_logprobs
    assert not SELECTORS["majority"].needs_logprobs


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_check_selector_known(name):
    assert check_selector(name) is SELECTORS[name]


def test_check_selector_lists_valid_names():
    with pytest.raises(ValueError) as info:
        check_selector("best")
    message = str(info.value)
    assert "'best'" in message
    for name in ("verifier", "weighted_majority", "majority", "logprob"):
        assert name in message
