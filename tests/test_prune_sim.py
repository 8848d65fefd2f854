"""``verifier_training prune``: the server's pruning replayed over recorded samples, and the
ranking both share (``bon_server.search.prune.prune_order``)."""

from __future__ import annotations

from pathlib import Path

from bon_server.search.prune import prune_order
from bon_server.tasks import get_task
from verifier_training.data.records import SampleRecord, write_jsonl
from verifier_training.evaluate.prune import (
    exact_scorer,
    main,
    prefix_at,
    prefix_signal,
    replay,
)

POLICY = "bon_server/embedded/paths-policy"
QUESTION = "Find a path from 12 to 57. Edges: 12>3, 3>57, 12>8, 8>41."
RIGHT = "12>3\n3>57\nThe answer is 12>3>57."  # the right arm
OTHER_ARM = "12>8\n8>41\nThe answer is 12>8>41."  # listed edges, wrong arm: bad at step 1
FORGED = "12>9\n9>57\nThe answer is 12>9>57."  # an edge that is not listed


def rec(i: int, completion: str, problem: int = 0) -> SampleRecord:
    task = get_task("paths")
    return SampleRecord(
        problem_id=f"eval-1234-{problem:05d}", question=QUESTION, reference="12>3>57",
        completion=completion, answer=completion.rsplit("is ", 1)[-1].rstrip("."),
        correct=task.check(task.parse(QUESTION), completion), policy=POLICY,
        temperature=1.0, top_p=1.0, max_tokens=64, seed=0, sample_index=i,
        finish_reason="stop", completion_tokens=10, task="paths",
    )


def count_tokens(text: str) -> int:
    return len(text)  # a stand-in: one "token" a character


def test_prefix_at_is_the_finished_lines_of_a_candidate_still_writing():
    assert prefix_at(RIGHT, 1) == "12>3\n"
    assert prefix_at(RIGHT, 2) == "12>3\n3>57\n"
    assert prefix_at(RIGHT, 3) is None  # it ended on its answer line: not racing
    assert prefix_at("12>3\n\n3>57\nThe", 2) == "12>3\n\n3>57\n"  # blank lines are no step
    assert prefix_at("12>3\n", 1) is None  # ended right at the boundary


def test_prune_order_is_by_score_then_start_and_distinct_only_breaks_ties():
    assert prune_order([0.2, 0.9, 0.9], [5, 7, 6]) == [2, 1, 0]
    texts = ["a", "a", "b", "c"]
    # all tied: each text's first holder (by start) ahead of the repeats
    assert prune_order([0.0] * 4, [0, 1, 2, 3], texts) == [0, 2, 3, 1]
    # a better score still wins over a new text
    assert prune_order([0.9, 0.9, 0.1, 0.1], [0, 1, 2, 3], texts) == [0, 1, 2, 3]


def test_the_exact_scorer_judges_the_finished_steps():
    score = exact_scorer()
    assert score(rec(0, RIGHT), "12>3\n") == 1.0
    assert score(rec(0, OTHER_ARM), "12>8\n") == 0.0  # the target is not reachable from 8
    assert score(rec(0, FORGED), "12>9\n") == 0.0  # not a listed edge
    assert score(rec(0, RIGHT), "") == 1.0  # nothing judged yet


def test_replay_prunes_as_the_server_would_and_counts_partial_tokens():
    block = [rec(0, OTHER_ARM), rec(1, FORGED), rec(2, OTHER_ARM), rec(3, RIGHT)]
    fixed = replay([block], lambda r, p: 0.0, count_tokens, keep=1.0)
    assert fixed.oracle == 1.0 and fixed.pruned == 0 and fixed.tokens == 40
    # no signal: ties go by start order, so the right one (started last) is cut
    blind = replay([block], lambda r, p: 0.0, count_tokens, keep=0.5)
    assert blind.pruned == 2 and blind.oracle == 0.0
    assert blind.tokens == 10 + 10 + len("12>8\n") + len("12>3\n")
    # the exact step checker keeps the right one and cuts the bad steps
    exact = replay([block], exact_scorer(), count_tokens, keep=0.25)
    assert exact.pruned == 3 and exact.oracle == 1.0 and exact.majority == 1.0
    assert exact.tokens == 10 + len("12>8\n") * 2 + len("12>9\n")
    # distinct: the repeated wrong-arm prefix goes after the other prefixes
    distinct = replay([block], lambda r, p: 0.0, count_tokens, keep=0.75, distinct=True)
    assert distinct.pruned == 1 and distinct.oracle == 1.0


def test_prefix_signal_is_pairwise_accuracy_with_ties_half():
    block = [rec(0, OTHER_ARM), rec(1, FORGED), rec(2, RIGHT)]
    assert prefix_signal([block], exact_scorer(), 1) == (1.0, 2)
    assert prefix_signal([block], lambda r, p: 0.0, 1) == (0.5, 2)


def test_the_command_prints_the_table(tmp_path: Path, capsys):
    path = tmp_path / "samples.jsonl"
    rows = []
    for problem in range(3):
        rows += [rec(i, c, problem) for i, c in enumerate([OTHER_ARM, FORGED, OTHER_ARM, RIGHT])]
    write_jsonl(str(path), rows)
    assert main(["--samples", str(path), "--cap", "4", "--every", "1", "--keeps", "0.25",
                 "--distinct"]) == 0
    out = capsys.readouterr().out
    assert "3 requests of best_of 4; fixed N: perfect verifier 1.000" in out
    assert "exact: step 1 1.000" in out and "none: step 1 0.500" in out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["none"], ["exact"])
            and len(line.split()) == 11]
    assert [r[:4] for r in rows] == [["none", "no", "1", "0.250"], ["none", "yes", "1", "0.250"],
                                     ["exact", "no", "1", "0.250"], ["exact", "yes", "1", "0.250"]]
    assert rows[0][7] == "0.000" and rows[2][7] == "1.000"  # blind cuts the right one
