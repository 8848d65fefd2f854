"""The post-training selection rules on scripted samples (no engine, no training)."""

from __future__ import annotations

import pytest

from bon_server.tasks import get_task
from verifier_training.data.records import SampleRecord
from verifier_training.posttrain.distill import pick_solutions, verifier_kept
from verifier_training.posttrain.rsft import kept_figures
from verifier_training.posttrain.selection import preference_pairs, select

TASK = get_task("countdown")
PROBLEMS = TASK.problems(4, 99)


def record(p: int, i: int, text: str, *, finish: str = "stop") -> SampleRecord:
    problem = PROBLEMS[p]
    from bon_server.answers import extract_answer

    return SampleRecord(
        problem_id=f"train-99-{p:05d}", question=problem.question, reference=problem.answer,
        completion=text, answer=extract_answer(text), correct=TASK.check(problem, text),
        policy="scripted", temperature=1.0, top_p=1.0, max_tokens=128, seed=p, sample_index=i,
        finish_reason=finish, completion_tokens=len(text), task="countdown")


def right(p: int) -> str:
    return TASK.reference(PROBLEMS[p])


def wrong(p: int, n: int = 0) -> str:
    return f"1 + 1 = 2\nThe answer is {n} + 1."


# Problem 0: two distinct right texts (one twice), one wrong, a right one cut by max_tokens.
# Problem 1: only wrong. Problem 2: one right, three wrong (two alike). Problem 3: all wrong.
SAMPLES = [
    record(0, 0, right(0)), record(0, 1, right(0) + "\n"),
    record(0, 2, "\n" + right(0).replace("The answer is", "The answer is ")),
    record(0, 3, wrong(0)), record(0, 4, right(0), finish="length"),
    record(1, 0, wrong(1)), record(1, 1, wrong(1, 5)),
    record(2, 0, wrong(2)), record(2, 1, right(2)), record(2, 2, wrong(2, 7)),
    record(2, 3, wrong(2, 7)),
    record(3, 0, wrong(3)),
]


def test_scripted_samples_are_what_the_tests_say() -> None:
    assert [r.correct for r in SAMPLES] == [True, True, True, False, True, False, False,
                                            False, True, False, False, False]


@pytest.mark.parametrize("per_problem", [1, 2, 5])
def test_checker_keeps_distinct_right_completions_only(per_problem: int) -> None:
    kept = select(SAMPLES, "checker", per_problem=per_problem)
    assert all(k.record.correct and k.record.finish_reason == "stop" for k in kept)
    assert all(TASK.check(TASK.parse(k.question), k.completion) for k in kept)
    by_problem = {}
    for k in kept:
        by_problem.setdefault(k.record.problem_id, []).append(k.completion)
    assert set(by_problem) == {"train-99-00000", "train-99-00002"}
    assert len(by_problem["train-99-00000"]) == min(per_problem, 2)  # 2 distinct stripped
    for texts in by_problem.values():
        assert len(set(texts)) == len(texts)


def test_checker_is_seeded_per_problem() -> None:
    a = select(SAMPLES, "checker", per_problem=1, seed=3)
    b = select(list(reversed(SAMPLES)), "checker", per_problem=1, seed=3)
    assert sorted(k.completion for k in a) == sorted(k.completion for k in b)


def test_verifier_rule_follows_scores_not_ground_truth() -> None:
    # the verifier prefers the wrong answers: the rule must keep them, never reading `correct`
    scores = {r.key: (0.9 if not r.correct else 0.2) for r in SAMPLES}
    kept = select(SAMPLES, "verifier", scores=scores, selector="verifier")
    assert len(kept) == 4  # one per problem (the truncated sample never counts)
    assert all(not k.record.correct and k.score == 0.9 for k in kept)
    assert kept_figures(kept)["kept_right"] == 0.0


def test_verifier_rule_threshold_and_top_fraction() -> None:
    scores = {r.key: 0.1 for r in SAMPLES}
    scores.update({SAMPLES[8].key: 0.95, SAMPLES[5].key: 0.7, SAMPLES[11].key: 0.6})
    kept = select(SAMPLES, "verifier", scores=scores, selector="verifier", threshold=0.5)
    # most confident first; problem 0's best scores 0.1 and is dropped
    assert [k.record.key for k in kept] == [SAMPLES[8].key, SAMPLES[5].key, SAMPLES[11].key]
    kept = select(SAMPLES, "verifier", scores=scores, selector="verifier", top_fraction=0.5)
    assert [k.score for k in kept] == [0.95, 0.7]  # the 2 most confident of 4 problems


def test_weighted_majority_rule_keeps_the_heaviest_answer() -> None:
    # problem 2: its right answer once at 0.95 against "7 + 1" twice at 0.5 (1.0 in all)
    scores = {r.key: 0.5 for r in SAMPLES}
    scores[SAMPLES[8].key] = 0.95
    kept = select(SAMPLES, "verifier", scores=scores, selector="weighted_majority")
    problem_2 = [k for k in kept if k.record.problem_id == "train-99-00002"]
    assert problem_2[0].record.answer == SAMPLES[9].answer
    assert problem_2[0].score == pytest.approx(1.0 / 2.45)  # its share of the weighted vote
    scores[SAMPLES[9].key] = scores[SAMPLES[10].key] = 0.3  # now 0.6 < 0.95
    kept = select(SAMPLES, "verifier", scores=scores, selector="weighted_majority")
    problem_2 = [k for k in kept if k.record.problem_id == "train-99-00002"]
    assert problem_2[0].record.key == SAMPLES[8].key
    with pytest.raises(ValueError, match="scores"):
        select(SAMPLES, "verifier")


@pytest.mark.parametrize("per_problem", [1, 2])
@pytest.mark.parametrize("rule", ["random", "reference"])
def test_controls_keep_as_many_examples_as_the_checker(rule: str, per_problem: int) -> None:
    kept = select(SAMPLES, rule, seed=1, per_problem=per_problem)
    assert len(kept) == len(select(SAMPLES, "checker", per_problem=per_problem)) == \
        1 + per_problem  # problem 2 has one right text, problem 0 two
    assert len({(k.question, k.completion) for k in kept}) == len(kept)
    if rule == "reference":
        assert all(k.record is None for k in kept)
        assert all(k.completion == TASK.reference(TASK.parse(k.question)) for k in kept)
    else:
        texts = {(r.question, r.completion.strip()) for r in SAMPLES if r.finish_reason == "stop"}
        assert all((k.question, k.completion) in texts for k in kept)
    # different seeds choose different examples at least once
    chosen = {tuple(sorted((k.question, k.completion) for k in select(SAMPLES, rule, seed=s)))
              for s in range(8)}
    assert len(chosen) > 1


def test_unknown_rule() -> None:
    with pytest.raises(ValueError, match="valid rules"):
        select(SAMPLES, "best")


def test_checker_pairs_are_right_over_wrong_and_distinct() -> None:
    pairs = preference_pairs(SAMPLES, "checker", pairs_per_problem=3)
    # problem 0: 2 distinct right texts x 1 wrong; problem 2: 1 right x 2 distinct wrong
    assert len(pairs) == 2 + 2
    for q, chosen, rejected in pairs:
        problem = TASK.parse(q)
        assert TASK.check(problem, chosen) and not TASK.check(problem, rejected)
        assert chosen != rejected
    assert len(set(pairs)) == len(pairs)
    assert len(preference_pairs(SAMPLES, "checker", pairs_per_problem=1)) == 2


def test_verifier_pairs_prefer_higher_scores() -> None:
    scores = {r.key: 0.1 * r.sample_index for r in SAMPLES}
    pairs = preference_pairs(SAMPLES, "verifier", pairs_per_problem=10, scores=scores)
    by_text: dict[tuple[str, str], float] = {}
    for r in SAMPLES:  # a text's score is its first sample's that was not cut off
        if r.finish_reason == "stop":
            by_text.setdefault((r.question, r.completion.strip()), scores[r.key])
    assert pairs
    for q, chosen, rejected in pairs:
        assert by_text[(q, chosen)] > by_text[(q, rejected)]
    with pytest.raises(ValueError, match="checker"):
        preference_pairs(SAMPLES, "random")


def test_teacher_picks_as_the_server_would() -> None:
    picks = pick_solutions(SAMPLES, "majority")
    assert len(picks) == 4
    # problem 2: "7 + 1" twice beats the right answer once; problem 0: the right answer
    by_problem = {r.problem_id: r for r in picks}
    assert by_problem["train-99-00000"].correct
    assert by_problem["train-99-00002"].answer == SAMPLES[9].answer


def test_distills_verifier_filter_keeps_a_threshold_then_the_best_share() -> None:
    picks = pick_solutions(SAMPLES, "majority")
    scores = {r.key: s for r, s in zip(picks, (0.9, 0.2, 0.6, 0.4), strict=True)}
    assert verifier_kept(picks, scores, 0.5) == [picks[0], picks[2]]
    assert verifier_kept(picks, scores, 0.0, top_fraction=0.5) == [picks[0], picks[2]]
    assert verifier_kept(picks, scores, 0.0, top_fraction=0.25) == [picks[0]]
    assert verifier_kept(picks, scores, 0.7, top_fraction=0.5) == [picks[0]]


def test_checker_with_exact_steps_drops_right_answers_reached_through_a_forged_step() -> None:
    answer_line = right(0).splitlines()[-1]
    forged = record(0, 5, "1 + 1 = 3\n" + answer_line)
    samples = [record(0, 0, right(0)), forged]
    assert forged.correct  # the answer line alone is right
    kept = select(samples, "checker", per_problem=5)
    assert {k.completion for k in kept} == {right(0), forged.completion}
    assert kept_figures(kept)["right_with_a_wrong_step"] == 1
    kept = select(samples, "checker", per_problem=5, exact_steps=True)
    assert [k.completion for k in kept] == [right(0)]
