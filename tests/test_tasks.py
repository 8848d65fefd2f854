"""The task worlds: checkers on hand-written answers, generators' distributions, the interface."""

import random
from collections import Counter

import pytest

from bon_server.tasks import TASKS, get_task, task_for_question
from bon_server.tasks.base import completion_steps
from bon_server.tasks.countdown import (
    MAX_DEPTH,
    ExpressionError,
    parse_expression,
    solvable,
)
from bon_server.tasks.countdown import Problem as CD
from bon_server.tasks.paths import Problem as Paths

# ------------------------------------------------------------------ the interface, every world


@pytest.mark.parametrize("name", list(TASKS))
def test_every_world_references_check_and_prompts_parse_back(name):
    task = get_task(name)
    problems = task.problems(300, seed=7)
    assert problems == task.problems(300, seed=7)  # seeded
    assert problems != task.problems(300, seed=8)
    for p in problems:
        ref = task.reference(p)
        assert task.check(p, ref), (p.question, ref)
        assert task.parse(p.question) == p
        assert task_for_question(p.question) is task
        assert not task.check(p, "")
        if name == "code":  # a program, no steps and no answer line (test_code_world.py)
            continue
        steps = completion_steps(ref)
        assert steps and all(task.check_step(p, steps, i) for i in range(len(steps)))
        assert not task.check(p, ref.rsplit("\n", 1)[0])  # no answer line


def test_unknown_task_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid tasks: arith, countdown, paths"):
        get_task("sudoku")
    assert task_for_question("Tell me a joke.") is None


# ------------------------------------------------------------------ Countdown

COUNTDOWN = get_task("countdown")
P = CD((3, 7, 12), 33)


def test_countdown_prompt_exactly():
    assert P.question == (
        "Using the numbers [3, 7, 12], make 33. Use + - * and each number exactly once."
    )


@pytest.mark.parametrize(
    ("answer", "right"),
    [
        ("12 * 3 - 7 + 3", False),  # a number twice
        ("(12 - 7) * 3 + 7", False),  # wrong multiset (7 twice, 12 once)
        ("3 * 7 + 12", True),
        ("12 + 7 * 3", True),
        ("(7 * 3) + 12", True),
        ("((3 * 7)) + (12)", True),
        ("3*7+12", True),
        ("3 * 7 - 12", False),  # right numbers, wrong value
        ("7 * 3 + 12 + 0", False),  # an extra literal
        ("-3 * -7 + 12", False),  # unary minus
        ("3 * 7 - -12", False),
        ("3 * (7 + 12", False),  # unbalanced
        ("3 * 7 + 12)", False),
        ("3 ** 7 + 12", False),
        ("3 * 7 / 1 + 12", False),
        ("33", False),
        ("3 7 12", False),
        ("__import__('os')", False),
        ("3 * 7 + 1_2", False),
        ("", False),
    ],
)
def test_countdown_checker(answer, right):
    assert COUNTDOWN.check(P, f"3 * 7 = 21\n21 + 12 = 33\nThe answer is {answer}.") is right


def test_countdown_checker_reads_only_the_last_line_and_refuses_huge_or_deep_input():
    assert not COUNTDOWN.check(P, "The answer is 3 * 7 + 12.\nI changed my mind.")
    deep = "(" * (MAX_DEPTH + 1) + "3" + ")" * (MAX_DEPTH + 1) + " * 7 + 12"
    assert not COUNTDOWN.check(P, f"The answer is {deep}.")
    with pytest.raises(ExpressionError, match="deeply"):
        parse_expression(deep)
    ok = "(" * MAX_DEPTH + "3" + ")" * MAX_DEPTH + " * 7 + 12"
    assert COUNTDOWN.check(P, f"The answer is {ok}.")
    huge = "3 * 7 + 12" + " + 0" * 10_000
    with pytest.raises(ExpressionError, match="long"):
        parse_expression(huge)
    assert not COUNTDOWN.check(P, f"The answer is {huge}.")
    assert not COUNTDOWN.check(P, "The answer is " + "9" * 5000 + ".")


def test_countdown_generator_distribution():
    problems = COUNTDOWN.problems(4000, seed=1)
    sizes = Counter(len(p.numbers) for p in problems)
    assert abs(sizes[3] - 2000) < 150 and set(sizes) == {3, 4}
    values = Counter(n for p in problems for n in p.numbers)
    assert set(values) == set(range(1, 13))
    assert max(values.values()) / min(values.values()) < 1.25  # uniform in 1..12
    assert all(1 <= p.target <= 100 for p in problems)
    assert any(len(set(p.numbers)) < len(p.numbers) for p in problems)  # repeats allowed
    assert len({p.target for p in problems}) > 80
    assert all(solvable(p.numbers, p.target) for p in problems[:200])


def test_countdown_exact_step_labels():
    p = CD((12, 7, 3, 1), 16)
    steps = ["12 - 7 = 5", "5 * 3 = 15", "15 + 1 = 16"]
    assert [COUNTDOWN.check_step(p, steps, i) for i in range(3)] == [True, True, True]
    assert COUNTDOWN.check_step(p, ["12 - 7 = 6"], 0) is False  # false arithmetic
    assert COUNTDOWN.check_step(p, ["12 - 8 = 4"], 0) is False  # 8 is not available
    assert COUNTDOWN.check_step(p, ["12 - 7 = 5", "5 + 12 = 17"], 1) is False  # 12 used up
    assert COUNTDOWN.check_step(p, ["12 * 7 = 84", "84 * 3 = 252"], 1) is False  # dead end
    assert COUNTDOWN.check_step(p, ["a step of another shape"], 0) is None


# ------------------------------------------------------------------ graph paths

PATHS = get_task("paths")
G = Paths(12, 57, ((12, 3), (3, 57), (12, 8), (8, 41)))


def test_paths_prompt_exactly():
    assert G.question == "Find a path from 12 to 57. Edges: 12>3, 3>57, 12>8, 8>41."


@pytest.mark.parametrize(
    ("answer", "right"),
    [
        ("12>3>57", True),
        ("12 > 3 > 57", True),
        ("12>57", False),  # missing edge (forged straight into the target)
        ("12>8>57", False),  # 8>57 is not listed
        ("12>8>41", False),  # wrong end
        ("3>57", False),  # wrong start
        ("8>3>57", False),
        ("57>3>12", False),  # edges are directed
        ("12", False),
        ("12>3>57>", False),
        ("12->3->57", False),
        ("path 12>3>57", False),
        ("", False),
    ],
)
def test_paths_checker(answer, right):
    assert PATHS.check(G, f"12>3\n3>57\nThe answer is {answer}.") is right


def test_paths_generator_distribution():
    problems = PATHS.problems(3000, seed=2)
    arms = Counter(sum(a == p.start for a, _ in p.edges) for p in problems)
    assert set(arms) == {2, 3, 4} and min(arms.values()) > 850
    lengths = Counter(len(p.edges) // arms_of(p) for p in problems)
    assert set(lengths) == {2, 3} and min(lengths.values()) > 1300
    for p in problems[:500]:
        labels = {n for e in p.edges for n in e}
        assert len(labels) == len(p.edges) + 1 and labels <= set(range(1, 100))
        assert sum(b == p.target for _, b in p.edges) == 1
        assert not any(a == p.target for a, _ in p.edges)  # the last node of an arm
        assert len(p.path) == len(p.edges) // arms_of(p) + 1
    first = Counter(p.edges[0][0] == p.start for p in problems)  # listed in random order
    assert 0.2 < first[True] / len(problems) < 0.6
    # the target's arm is uniform among the arms
    position = Counter(
        sorted(b for a, b in p.edges if a == p.start).index(p.path[1])
        for p in problems
        if arms_of(p) == 2
    )
    assert abs(position[0] - position[1]) < 0.15 * sum(position.values())


def arms_of(p):
    return sum(a == p.start for a, _ in p.edges)


def test_paths_exact_step_labels():
    assert PATHS.check_step(G, ["12>3", "3>57"], 1) is True
    assert PATHS.check_step(G, ["12>8"], 0) is False  # the wrong arm: 57 unreachable
    assert PATHS.check_step(G, ["12>3", "8>41"], 1) is False  # does not chain
    assert PATHS.check_step(G, ["12>57"], 0) is False  # not an edge
    assert PATHS.check_step(G, ["The answer is 12>3>57."], 0) is None


def test_generators_are_their_own_streams():
    for task in TASKS.values():
        rng = random.Random(5)
        assert [task.sample(rng) for _ in range(5)] == task.problems(5, 5)


def test_countdown_corrupt_makes_near_misses_the_checker_refuses():
    rng = random.Random(0)
    made = 0
    for p in COUNTDOWN.problems(200, seed=9):
        ref = COUNTDOWN.reference(p)
        bad = COUNTDOWN.corrupt(p, ref, rng)
        if bad is None:
            continue
        made += 1
        assert not COUNTDOWN.check(p, bad)
        assert len(bad.splitlines()) == len(ref.splitlines())  # an edit, not a rewrite
        assert sum(a != b for a, b in zip(bad.splitlines(), ref.splitlines(), strict=True)) <= 2
    assert made > 150


def test_hard_negatives_are_wrong_copies_of_right_records():
    from dataclasses import replace

    from verifier_training.data.records import SampleRecord
    from verifier_training.train.orm import hard_negatives

    p = COUNTDOWN.problems(1, seed=3)[0]
    right = SampleRecord(
        problem_id="train-101-00000", question=p.question, reference=p.answer,
        completion=COUNTDOWN.reference(p), answer=None, correct=True, policy="p",
        temperature=1.0, top_p=1.0, max_tokens=128, seed=1, sample_index=0,
        finish_reason="stop", completion_tokens=10, task="countdown")
    wrong = replace(right, completion="The answer is 1.", correct=False, sample_index=1)
    out = hard_negatives([right, wrong], 3.0, random.Random(0))
    assert 1 <= len(out) <= 3 and all(not r.correct for r in out)
    assert all(not COUNTDOWN.check(p, r.completion) for r in out)
    assert {r.problem_id for r in out} == {right.problem_id}


def test_paths_corrupt_makes_whole_wrong_solutions_of_each_kind():
    rng = random.Random(0)
    made = {"forge": 0, "wrong_end": 0, "swap": 0}
    for p in PATHS.problems(300, seed=9):
        ref = PATHS.reference(p)
        bad = PATHS.corrupt(p, ref, rng)
        if bad is None:
            continue
        assert not PATHS.check(p, bad)
        steps = bad.splitlines()[:-1]
        nodes = [int(x) for x in bad.splitlines()[-1].removeprefix("The answer is ")
                 .removesuffix(".").split(">")]
        # steps and answer line tell the same (wrong) path
        assert steps == [f"{a}>{b}" for a, b in zip(nodes, nodes[1:], strict=False)]
        assert nodes[0] == p.start
        listed = [(a, b) in set(p.edges) for a, b in zip(nodes, nodes[1:], strict=False)]
        used = {n for edge in p.edges for n in edge}
        if not set(nodes) <= used:
            made["swap"] += 1
            assert listed.count(False) == 2  # into and out of the unlisted node
        elif nodes[-1] != p.target:
            made["wrong_end"] += 1
            assert all(listed) and nodes[1] != p.path[1]
        elif nodes[1] != p.path[1]:
            made["forge"] += 1
            assert all(listed[:-1]) and not listed[-1]  # only the last edge is forged
        else:
            raise AssertionError(f"not a near miss of a known kind: {bad!r}")
    assert min(made.values()) > 50, made
    assert PATHS.corrupt(p, "no answer here", rng) is None


def test_policy_world_reads_sft_records_and_inherits_through_post_training(tmp_path):
    import json

    from bon_server.tasks import policy_task, policy_world

    def policy(name: str, record: object) -> str:
        (tmp_path / name).mkdir()
        (tmp_path / name / "training_config.json").write_text(json.dumps(record))
        return str(tmp_path / name)

    sft = {"command": "python -m verifier_training sft", "data": {"task": "countdown"}}
    assert policy_world(policy("sft", sft)) == "countdown"
    # rsft/dpo rounds before they recorded their own world: the init's, however deep
    rsft = {"command": "python -m verifier_training rsft", "init_training_config":
            {"command": "python -m verifier_training rsft", "init_training_config": sft}}
    assert policy_world(policy("rsft", rsft)) == "countdown"
    own = {**rsft, "data": {"task": "paths"}}
    assert policy_world(policy("own", own)) == "paths"
    assert policy_world(policy("theirs", {"command": "trainer.py"})) is None
    assert policy_world(str(tmp_path / "missing")) is None
    assert policy_task(str(tmp_path / "missing")) == "arith"
