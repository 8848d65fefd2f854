"""Best-of-N subsampling and the diagnostic metrics, on hand-made scored candidates."""

from __future__ import annotations

import math

import pytest

from verifier_training.evaluate.curves import Scored, methods_for
from verifier_training.evaluate.metrics import (
    best_of_n,
    first_error_f1,
    gap_closed,
    pairwise_accuracy,
    powers_of_two,
    roc_auc,
    table,
)


def cand(i: int, answer: str | None, correct: bool, orm: float, prm: tuple[float, ...]) -> Scored:
    return Scored("p", i, answer, correct, orm, prm)


# One problem: the right answer "14" is a minority; the ORM and PRM both prefer it,
# the PRM only under min (its last step is confidently wrong on candidate 3).
PROBLEM = [
    cand(0, "15", False, 0.2, (0.9, 0.1)),
    cand(1, "15", False, 0.3, (0.8, 0.2)),
    cand(2, "14", True, 0.9, (0.7, 0.8)),
    cand(3, "15", False, 0.1, (0.3, 0.95)),
]


def test_methods_on_all_candidates() -> None:
    methods = methods_for(True, True, "min")
    assert list(methods) == [
        "pass@1", "majority", "weighted_majority_orm", "weighted_majority_prm", "orm",
        "prm_min", "prm_prod", "prm_last", "prm_mean", "oracle",
    ]
    got = {name: fn(PROBLEM) for name, fn in methods.items()}
    assert got["pass@1"] == 0.25
    assert got["majority"] == 0.0  # "15" x3
    assert got["weighted_majority_orm"] == 1.0  # ORM mass: "14" 0.9 > "15" 0.6
    assert got["orm"] == 1.0 and got["prm_min"] == 1.0 and got["prm_prod"] == 1.0
    assert got["prm_last"] == 0.0  # candidate 3's last step scores 0.95
    assert got["oracle"] == 1.0


def test_weighted_majority_sums_scores_per_answer() -> None:
    heavy = [*PROBLEM[:2], PROBLEM[2], cand(3, "15", False, 0.5, (0.3, 0.95))]
    # ORM mass: "15" = 0.2 + 0.3 + 0.5 = 1.0 > "14" = 0.9, although the ORM argmax is "14"
    methods = methods_for(True, False, "min")
    assert methods["weighted_majority_orm"](heavy) == 0.0 and methods["orm"](heavy) == 1.0


def test_methods_without_verifiers() -> None:
    assert list(methods_for(False, False, "min")) == ["pass@1", "majority", "oracle"]


def test_best_of_n_at_full_k_is_exact_and_subsets_are_seeded() -> None:
    methods = methods_for(True, True, "min")
    curve = best_of_n([PROBLEM], methods, [1, 2, 4], subsets=50, seed=0)
    assert curve["orm"][4] == (1.0, 0.0)
    assert curve["majority"][4][0] == 0.0
    # N=1: every method picks the lone candidate: all equal pass@1 on the same draws
    assert curve["orm"][1][0] == curve["majority"][1][0] == curve["oracle"][1][0]
    # C(4, 2) = 6 <= 50: all pairs, exactly; 3 of the 6 contain the correct candidate
    assert curve["oracle"][2][0] == 0.5
    sampled = best_of_n([PROBLEM], methods, [2], subsets=3, seed=7)
    assert sampled == best_of_n([PROBLEM], methods, [2], subsets=3, seed=7)


def test_best_of_n_expected_values_over_many_subsets() -> None:
    problem = [cand(i, str(i % 2), i % 2 == 0, float(i % 2 == 0), (1.0,)) for i in range(8)]
    exact = best_of_n([problem], methods_for(True, False, "min"), [1, 2], 32, seed=1)
    assert exact["pass@1"][1][0] == 0.5 and exact["orm"][1][0] == 0.5
    assert exact["orm"][2][0] == pytest.approx(1 - 6 / 28)  # some correct in the pair
    sampled = best_of_n([problem], methods_for(True, False, "min"), [2], 4000, seed=1)
    assert sampled["orm"][2][0] == pytest.approx(1 - 6 / 28)  # C(8, 2) = 28 < 4000: exact
    drawn = best_of_n([problem], methods_for(True, False, "min"), [2], 20, seed=1)
    assert drawn["orm"][2][0] == pytest.approx(1 - 6 / 28, abs=0.25)


def test_standard_error_is_over_problems() -> None:
    right = [cand(0, "1", True, 1.0, (1.0,))]
    wrong = [cand(0, "2", False, 1.0, (1.0,))]
    curve = best_of_n([right, wrong], methods_for(True, False, "min"), [1], 4, 0)
    mean, se = curve["orm"][1]
    assert mean == 0.5 and se == pytest.approx(math.sqrt(0.5 / 2))


def test_gap_closed() -> None:
    curve = {"pass@1": {16: (0.4, 0)}, "oracle": {16: (0.9, 0)}, "prm_min": {16: (0.7, 0)}}
    assert gap_closed(curve, "prm_min", 16) == pytest.approx(0.6)
    assert gap_closed(curve, "orm", 16) is None


def test_pairwise_accuracy_counts_ties_half() -> None:
    groups = [[(0.9, True), (0.1, False), (0.9, False)], [(0.5, False)]]
    assert pairwise_accuracy(groups) == pytest.approx((1 + 0.5) / 2)
    assert pairwise_accuracy([[(0.5, False)]]) is None


def test_first_error_f1_processbench() -> None:
    reference = [-1, -1, 0, 2, 1]
    predicted = [-1, 1, 0, 1, 1]
    out = first_error_f1(reference, predicted)
    assert out["correct_accuracy"] == 0.5 and out["error_accuracy"] == pytest.approx(2 / 3)
    assert out["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert out["n_error"] == 3 and out["n_correct"] == 2


def test_powers_and_table() -> None:
    assert powers_of_two(64) == [1, 2, 4, 8, 16, 32, 64]
    assert powers_of_two(12) == [1, 2, 4, 8]
    text = table({"orm": {1: (0.5, 0.0)}}, [1, 2])
    assert "orm" in text and "0.500" in text


def test_roc_auc():
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert roc_auc([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) == 0.0
    assert roc_auc([0.5, 0.5, 0.5], [True, False, True]) == 0.5
    assert roc_auc([0.3, 0.1, 0.3, 0.7], [True, False, False, True]) == 7 / 8  # 3 wins, 1 tie of 4
    assert roc_auc([0.1, 0.2], [True, True]) is None
