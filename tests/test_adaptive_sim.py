"""``verifier_training adaptive``: the server's stopping rule replayed over recorded samples."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from bon_server.search import Adaptive
from verifier_training.data.records import SampleRecord, write_jsonl
from verifier_training.evaluate.adaptive import blocks, main, replay


def rec(problem: int, i: int, answer: str | None, correct: bool, tokens: int = 10):
    return SampleRecord(
        problem_id=f"eval-1234-{problem:05d}", question="What is 2 + 3?", reference="5",
        completion=f"The answer is {answer}.", answer=answer, correct=correct, policy="p",
        temperature=1.0, top_p=1.0, max_tokens=64, seed=0, sample_index=i,
        finish_reason="stop", completion_tokens=tokens,
    )


def unanimous(problem: int, k: int = 16):
    return [rec(problem, i, "5", True) for i in range(k)]


def split(problem: int, k: int = 16):
    """Wrong twice, then right: a 2-2 split after four, right by majority at sixteen."""
    pattern = ["7", "7", "5", "5"] + ["5"] * 8 + ["7"] * 4
    return [rec(problem, i, a, a == "5") for i, a in enumerate(pattern[:k])]


def test_blocks_cut_each_problem_in_index_order():
    rows = unanimous(0, 40)[::-1]  # shuffled order, 40 samples: two whole blocks of 16
    got = blocks(rows, 16)
    assert len(got) == 2 and [s.sample_index for s in got[1]] == list(range(16, 32))


def test_replay_stops_where_the_server_would_and_counts_what_it_drew():
    requests = [unanimous(0), split(1)]
    fixed = replay(requests, None)
    assert fixed.accuracy == 1.0 and fixed.tokens == 160 and fixed.candidates == 16
    ada = replay(requests, Adaptive(wave=4, min_candidates=4, confidence=0.95))
    # the unanimous one stops after 4; the split one goes on: after 8 it is 6-2 for "5"
    # (0.91), after 12 it is 10-2 (0.99): it stops at 12
    assert ada.candidates == (4 + 12) / 2 and ada.tokens == (40 + 120) / 2
    assert ada.accuracy == 1.0
    # with a minimum of 2 and waves of 2 the split one is caught early, on the wrong answer
    eager = replay([split(1)], Adaptive(wave=2, min_candidates=2, confidence=0.8))
    assert eager.candidates == 2 and eager.accuracy == 0.0


def test_the_command_prints_the_grid(tmp_path: Path, capsys):
    path = tmp_path / "samples.jsonl"
    write_jsonl(str(path), unanimous(0, 32) + split(1))
    assert main(["--samples", str(path), "--cap", "16", "--waves", "4", "--mins", "4",
                 "--confidences", "0.95"]) == 0
    out = capsys.readouterr().out
    assert "3 requests of cap 16" in out and "fixed N: accuracy 1.000" in out
    row = out.strip().splitlines()[-1].split()
    assert row[:3] == ["4", "4", "0.95"] and row[3] == f"{(4 + 4 + 12) / 3:.1f}"


def test_answer_rules_re_extract_the_vote(tmp_path: Path, capsys):
    """Countdown: three ways of writing 14 lose to two copies of 11 by text, win by value."""
    writings = [("3 * 4 + 2", True), ("2 + 3 * 4", True), ("4 * 3 + 2", True),
                ("2 * 4 + 3", False), ("2 * 4 + 3", False)]
    rows = [dataclasses.replace(rec(0, i, text, right), completion=f"The answer is {text}.")
            for i, (text, right) in enumerate(writings)]
    path = tmp_path / "samples.jsonl"
    write_jsonl(str(path), rows)
    args = ["--samples", str(path), "--cap", "5", "--waves", "5", "--mins", "5",
            "--confidences", "0.9"]
    main(args)
    assert "fixed N: accuracy 0.000" in capsys.readouterr().out
    main([*args, "--answer-rules", "expression_value"])
    assert "fixed N: accuracy 1.000" in capsys.readouterr().out
