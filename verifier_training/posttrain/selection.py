"""Which samples post-training keeps: the selection rules of rejection sampling.

Best-of-N at inference and rejection sampling in post-training are the same machine: sample
many, keep the best by a checker or a verifier. These are the rules ``rsft``, ``dpo`` and
``distill`` share, as pure functions over one round's ``SampleRecord``s (grouped by problem):

    checker    the ground truth keeps what is right (STaR; Llama 2's rejection sampling with
               a perfect reward model): up to ``per_problem`` distinct right completions.
               With ``exact_steps`` only those whose every step the task's exact step checker
               accepts (a right answer reached through a forged step is dropped).
    verifier   no ground truth: the completion the server would answer with (the selector
               over the verifier's scores: ``verifier`` argmax or ``weighted_majority``), when
               the selector's confidence reaches ``threshold``, and only for the
               ``top_fraction`` most confident problems. What a team without labels can do.
    random     the control: as many examples as ``checker`` keeps (counted with the checker),
               drawn uniformly from all the round's distinct completions. Same data volume,
               no selection.
    reference  the other control: the task's reference solutions of as many randomly chosen
               problems ("more SFT": as much training, none of it sampled).

Completions that hit ``max_tokens`` are never kept; texts are compared after stripping. Each
problem's choice is seeded by ``(seed, problem_id)``, so it does not depend on order.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from bon_server.selectors import SelectorInput, verifier, weighted_majority
from bon_server.tasks import get_task
from bon_server.tasks.base import completion_steps
from verifier_training.data.records import SampleRecord, group_by_problem

RULES = ("checker", "verifier", "random", "reference")
VERIFIER_SELECTORS: dict[str, Callable[[SelectorInput], object]] = {
    "verifier": verifier,
    "weighted_majority": weighted_majority,
}


@dataclass(frozen=True, slots=True)
class Kept:
    """One kept training example: a question and the completion to learn (``record`` is the
    sample it came from; None for a reference solution)."""

    question: str
    completion: str
    record: SampleRecord | None
    score: float | None = None  # the verifier's, under the verifier rule


def _rng(seed: int, problem_id: str) -> random.Random:
    return random.Random(f"{seed}:{problem_id}")


def _distinct(records: Sequence[SampleRecord]) -> list[SampleRecord]:
    """First record of each distinct stripped text, leaving out truncated ones, in text order
    (so a seeded choice among them does not depend on the order records came in)."""
    seen: dict[str, SampleRecord] = {}
    for r in records:
        if r.finish_reason != "length":
            seen.setdefault(r.completion.strip(), r)
    return [seen[text] for text in sorted(seen)]


def right_steps(record: SampleRecord) -> bool:
    """No step of the completion is refused by its task's exact step checker."""
    task = get_task(record.task)
    problem, steps = task.parse(record.question), completion_steps(record.completion)
    return not any(task.check_step(problem, steps, i) is False for i in range(len(steps)))


def by_checker(groups: Mapping[str, Sequence[SampleRecord]], per_problem: int = 1,
               seed: int = 0, exact_steps: bool = False) -> list[Kept]:
    out = []
    for pid, records in groups.items():
        right = [r for r in _distinct(records) if r.correct and
                 (not exact_steps or right_steps(r))]
        for r in _rng(seed, pid).sample(right, min(per_problem, len(right))):
            out.append(Kept(r.question, r.completion.strip(), r))
    return out


def by_verifier(groups: Mapping[str, Sequence[SampleRecord]],
                scores: Mapping[tuple[str, int], float], *, selector: str = "weighted_majority",
                threshold: float = 0.0, top_fraction: float = 1.0,
                per_problem: int = 1) -> list[Kept]:
    """The selector's top ``per_problem`` distinct completions per problem. A pick's confidence
    is the selector's own score (the verifier's score for ``verifier``, the answer's share of
    the verifier-weighted vote for ``weighted_majority``); picks under ``threshold`` are
    dropped, and of the rest only the ``top_fraction`` most confident problems are kept.
    ``scores`` maps a record's ``key`` to its verifier score; ``correct`` is never read."""
    select_ = VERIFIER_SELECTORS[selector]
    chosen: list[list[Kept]] = []
    for records in groups.values():
        usable = [r for r in records if r.finish_reason != "length"]
        if not usable:
            continue
        selection = select_(SelectorInput(candidates=(), answers=[r.answer for r in usable],
                                          verifier_scores=[scores[r.key] for r in usable]))
        picks: list[Kept] = []
        for i in selection.order:
            r, confidence = usable[i], selection.scores[i]
            if confidence < threshold or len(picks) == per_problem:
                break
            if all(k.completion != r.completion.strip() for k in picks):
                picks.append(Kept(r.question, r.completion.strip(), r, confidence))
        if picks:
            chosen.append(picks)
    chosen.sort(key=lambda picks: -picks[0].score)  # stable: ties keep problem order
    keep = math.ceil(top_fraction * len(chosen))
    return [k for picks in chosen[:keep] for k in picks]


def by_random(groups: Mapping[str, Sequence[SampleRecord]], count: int,
              seed: int = 0) -> list[Kept]:
    """``count`` completions drawn uniformly from all distinct ones of the round."""
    pool = [r for pid in sorted(groups) for r in _distinct(groups[pid])]
    chosen = random.Random(seed).sample(pool, min(count, len(pool)))
    return [Kept(r.question, r.completion.strip(), r) for r in chosen]


def by_reference(groups: Mapping[str, Sequence[SampleRecord]], count: int,
                 seed: int = 0) -> list[Kept]:
    """The reference solutions of ``count`` problems drawn at random."""
    out = []
    for pid in random.Random(seed).sample(sorted(groups), min(count, len(groups))):
        first = groups[pid][0]
        task = get_task(first.task)
        out.append(Kept(first.question, task.reference(task.parse(first.question)), None))
    return out


def select(records: Sequence[SampleRecord], rule: str, *, per_problem: int = 1, seed: int = 0,
           scores: Mapping[tuple[str, int], float] | None = None,
           selector: str = "weighted_majority", threshold: float = 0.0,
           top_fraction: float = 1.0, exact_steps: bool = False) -> list[Kept]:
    """The examples ``rule`` keeps from one round's samples (see the module's text)."""
    groups = group_by_problem(records)
    if rule == "checker":
        return by_checker(groups, per_problem, seed, exact_steps)
    if rule == "verifier":
        if scores is None:
            raise ValueError("the verifier rule needs the verifier's scores")
        return by_verifier(groups, scores, selector=selector, threshold=threshold,
                           top_fraction=top_fraction, per_problem=per_problem)
    if rule in ("random", "reference"):  # the controls: as many examples as the checker keeps
        count = len(by_checker(groups, per_problem, seed, exact_steps))
        return (by_random if rule == "random" else by_reference)(groups, count, seed)
    raise ValueError(f"unknown rule {rule!r}; valid rules: {', '.join(RULES)}")


def preference_pairs(records: Sequence[SampleRecord], rule: str, *, pairs_per_problem: int = 2,
                     seed: int = 0, scores: Mapping[tuple[str, int], float] | None = None,
                     ) -> list[tuple[str, str, str]]:
    """(question, chosen, rejected) for DPO, distinct texts, at most ``pairs_per_problem`` per
    problem (a seeded choice). ``checker``: chosen right, rejected wrong. ``verifier``: chosen
    among the top half by verifier score, rejected among the bottom half, pairs whose scores
    differ; no ground truth is read."""
    out = []
    for pid, records_ in group_by_problem(records).items():
        usable = _distinct(records_)
        rng = _rng(seed, pid)
        if rule == "checker":
            good = [r for r in usable if r.correct]
            bad = [r for r in usable if not r.correct]
            pairs = [(g, b) for g in good for b in bad]
        elif rule == "verifier":
            if scores is None:
                raise ValueError("the verifier rule needs the verifier's scores")
            ranked = sorted(usable, key=lambda r: -scores[r.key])
            half = len(ranked) // 2
            pairs = [(g, b) for g in ranked[:half] for b in ranked[half:]
                     if scores[g.key] > scores[b.key]]
        else:
            raise ValueError(f"pairs are chosen by 'checker' or 'verifier', not {rule!r}")
        for g, b in rng.sample(pairs, min(pairs_per_problem, len(pairs))):
            out.append((g.question, g.completion.strip(), b.completion.strip()))
    return out
