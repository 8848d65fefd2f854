"""Best-of-N accuracy and the verifier metrics, pure functions over scored candidates.

- ``best_of_n``: method -> N -> accuracy, from random N-subsets of each problem's candidates
  (exact where there are few); ``pick`` turns a server selector into such a method;
- ``roc_auc``, ``pairwise_accuracy``: how often a right candidate outscores a wrong one;
- ``first_error_f1``: ProcessBench's score of a PRM's first predicted error.

``curves`` (the ``evaluate`` command) and the ceilings use them; ``train-orm`` and
``train-prm`` report them on their validation problems.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Sequence
from typing import Any

from bon_server.selectors import SelectorInput


def rank_wins(scores: Sequence[float], labels: Sequence[bool]) -> tuple[float, int]:
    """(positive-over-negative wins with ties counted 1/2, number of such pairs), from ranks in
    O(n log n) rather than over every pair."""
    n_pos = sum(labels)
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    rank_sum, i = 0.0, 0
    while i < len(order):  # average ranks (1-based) over runs of equal scores
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        mid = (i + j) / 2 + 1
        rank_sum += sum(mid for k in range(i, j + 1) if labels[order[k]])
        i = j + 1
    return rank_sum - n_pos * (n_pos + 1) / 2, n_pos * (len(labels) - n_pos)


def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """P(a random positive scores above a random negative), ties counted half; None if one
    class is missing."""
    wins, pairs = rank_wins(scores, labels)
    return wins / pairs if pairs else None


def pairwise_accuracy(groups: Sequence[Sequence[tuple[float, bool]]]) -> float | None:
    """Over all (correct, incorrect) pairs within a group: P(correct scored higher), ties 1/2."""
    wins, pairs = 0.0, 0
    for group in groups:
        w, n = rank_wins([s for s, _ in group], [c for _, c in group])
        wins, pairs = wins + w, pairs + n
    return wins / pairs if pairs else None


def first_error_f1(reference: Sequence[int], predicted: Sequence[int]) -> dict[str, float]:
    """ProcessBench: accuracy on erroneous solutions (first error found exactly), on correct
    ones (no error predicted), and F1 = their harmonic mean. -1 means "no error"."""
    err = [p == r for r, p in zip(reference, predicted, strict=True) if r != -1]
    ok = [p == -1 for r, p in zip(reference, predicted, strict=True) if r == -1]
    acc_err = sum(err) / len(err) if err else 0.0
    acc_ok = sum(ok) / len(ok) if ok else 0.0
    f1 = 2 * acc_err * acc_ok / (acc_err + acc_ok) if acc_err + acc_ok else 0.0
    return {"error_accuracy": acc_err, "correct_accuracy": acc_ok, "f1": f1,
            "n_error": len(err), "n_correct": len(ok)}


def pick(sel: Callable[[SelectorInput], Any],
         score: Callable[[Any], float] | None,
         first: Callable[[Any], float] | None = None) -> Callable[[Sequence[Any]], float]:
    """A Best-of-N method: 1.0 if the candidate the selector ranks first is correct. Candidates
    have ``.answer`` and ``.correct``; ``score`` gives each one's verifier score. With ``first``
    (a test score), candidates rank by it first and the selector breaks ties, as the server
    ranks a request with ``tests`` (``bon_server.code_tests.rank``)."""
    def run(cands: Sequence[Any]) -> float:
        scores = [score(c) for c in cands] if score else None
        inp = SelectorInput(candidates=(), answers=[c.answer for c in cands],
                            verifier_scores=scores)
        order = sel(inp).order
        if first is not None:
            order = sorted(order, key=lambda i: -first(cands[i]))
        return float(cands[order[0]].correct)
    return run


def pass_at_1(cands: Sequence[Any]) -> float:
    return sum(c.correct for c in cands) / len(cands)


def oracle(cands: Sequence[Any]) -> float:
    return float(any(c.correct for c in cands))


def powers_of_two(k: int) -> list[int]:
    ns, n = [], 1
    while n <= k:
        ns.append(n)
        n *= 2
    return ns


def best_of_n(
    problems: Sequence[Sequence[Any]],
    methods: dict[str, Callable[[Sequence[Any]], float]],
    ns: Sequence[int],
    subsets: int,
    seed: int,
) -> dict[str, dict[int, tuple[float, float]]]:
    """method -> N -> (accuracy, standard error over problems).

    Per problem, every N-subset when there are at most max(subsets, K) of them (so N = 1
    and N = K are exact), else ``subsets`` random ones, are judged and averaged; problems
    count equally.
    """
    rng = random.Random(seed)
    per_problem: dict[str, dict[int, list[float]]] = {m: {n: [] for n in ns} for m in methods}
    for cands in problems:
        k = len(cands)
        for n in ns:
            if n > k:
                continue
            if math.comb(k, n) <= max(subsets, k):  # few enough: every subset, exactly
                draws = [list(c) for c in itertools.combinations(range(k), n)]
            else:
                draws = [rng.sample(range(k), n) for _ in range(subsets)]
            chosen = [[cands[i] for i in d] for d in draws]
            for name, fn in methods.items():
                per_problem[name][n].append(sum(fn(c) for c in chosen) / len(chosen))
    result: dict[str, dict[int, tuple[float, float]]] = {}
    for name, by_n in per_problem.items():
        result[name] = {}
        for n, values in by_n.items():
            if not values:
                continue
            mean = sum(values) / len(values)
            var = sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1)
            result[name][n] = (mean, math.sqrt(var / len(values)))
    return result


def gap_closed(
    curve: dict[str, dict[int, tuple[float, float]]], method: str, n: int
) -> float | None:
    """(method@N - pass@1) / (pass@N - pass@1): the share of the oracle's headroom won."""
    try:
        base, top, got = curve["pass@1"][n][0], curve["oracle"][n][0], curve[method][n][0]
    except KeyError:
        return None
    return (got - base) / (top - base) if top > base else None


def table(curve: dict[str, dict[int, tuple[float, float]]], ns: Sequence[int]) -> str:
    head = f"{'method':24s}" + "".join(f"{'N=' + str(n):>9s}" for n in ns)
    lines = [head, "-" * len(head)]
    for name, by_n in curve.items():
        cells = "".join(f"{by_n[n][0]:9.3f}" if n in by_n else f"{'':9s}" for n in ns)
        lines.append(f"{name:24s}{cells}")
    return "\n".join(lines)
