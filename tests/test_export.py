"""Derived data sets: RSFT dedupe, DPO pairing rules and caps, ORM and PRM forms."""

from __future__ import annotations

import json
from pathlib import Path

from verifier_training.data.records import SampleRecord, StepLabelRecord, write_jsonl
from verifier_training.posttrain import export

GOOD_A = "= 14\nThe answer is 14."
GOOD_B = "= 2 + 12\n= 14\nThe answer is 14."
BAD_A = "= 20\nThe answer is 20."
BAD_B = "= 2 + 12\n= 15\nThe answer is 15."


def rec(pid: str, i: int, text: str, correct: bool, finish: str = "stop") -> SampleRecord:
    return SampleRecord(
        problem_id=pid, question=f"Q {pid}", reference="14", completion=text, answer=None,
        correct=correct, policy="p", temperature=1.0, top_p=1.0, max_tokens=128, seed=0,
        sample_index=i, finish_reason=finish, completion_tokens=len(text),
    )


RECORDS = [
    rec("p1", 0, GOOD_A, True),
    rec("p1", 1, GOOD_A + "\n", True),  # same text after stripping
    rec("p1", 2, GOOD_B, True),
    rec("p1", 3, BAD_A, False),
    rec("p1", 4, BAD_A, False),
    rec("p1", 5, BAD_B, False),
    rec("p1", 6, "= 2 + 1", False, "length"),
    rec("p2", 0, BAD_A, False),  # only wrong: no RSFT rows, no pairs
]


def test_rsft_keeps_correct_completions_once_per_prompt() -> None:
    rows = export.rsft_examples(RECORDS)
    assert [r["messages"][1]["content"] for r in rows] == [GOOD_A, GOOD_B]
    assert rows[0]["messages"][0] == {"role": "user", "content": "Q p1"}
    assert rows[0]["messages"][1]["role"] == "assistant"


def test_dpo_pairs_are_correct_vs_wrong_distinct_and_deduplicated() -> None:
    pairs = export.dpo_pairs(RECORDS, max_pairs_per_prompt=0)
    got = {(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs}
    assert got == {(GOOD_A, BAD_A), (GOOD_A, BAD_B), (GOOD_B, BAD_A), (GOOD_B, BAD_B)}
    assert len(pairs) == 4  # no duplicates, truncated candidate left out
    assert all(p["prompt"] == [{"role": "user", "content": "Q p1"}] for p in pairs)


def test_dpo_cap_is_seeded_and_keeps_truncated_on_request() -> None:
    a = export.dpo_pairs(RECORDS, max_pairs_per_prompt=2, seed=3)
    assert len(a) == 2 and a == export.dpo_pairs(RECORDS, max_pairs_per_prompt=2, seed=3)
    with_truncated = export.dpo_pairs(RECORDS, max_pairs_per_prompt=0, skip_truncated=False)
    assert len(with_truncated) == 6


def test_orm_rows_are_unpaired_preferences() -> None:
    rows = export.orm_examples(RECORDS)
    assert [(r["completion"][0]["content"], r["label"]) for r in rows if r["prompt"][0][
        "content"] == "Q p1"] == [(GOOD_A, True), (GOOD_B, True), (BAD_A, False), (BAD_B, False)]
    assert sum(r["prompt"][0]["content"] == "Q p2" for r in rows) == 1


def test_prm_rows_are_trl_stepwise_with_hard_labels() -> None:
    lab = StepLabelRecord(
        problem_id="p1", sample_index=5, question="Q p1", reference="14",
        steps=("= 2 + 12", "= 15", "The answer is 15."), counts=(2, 0, 0), rollouts=4,
        inferred=(False, False, False), correct=False, policy="p", seed=0,
    )
    rows = export.prm_examples([lab, lab])
    assert rows == [{"prompt": "Q p1", "completions": ["= 2 + 12", "= 15", "The answer is 15."],
                     "labels": [True, False, False]}]


def test_main_writes_every_file(tmp_path: Path) -> None:
    samples = str(tmp_path / "s.jsonl")
    write_jsonl(samples, RECORDS)
    assert export.main(["--records", samples, "--out-dir", str(tmp_path / "x")]) == 0
    stats = json.loads((tmp_path / "x" / "export_stats.json").read_text())
    assert stats["rows"] == {"rsft": 2, "dpo": 4, "orm": 5}
    first = json.loads((tmp_path / "x" / "dpo.jsonl").read_text().splitlines()[0])
    assert set(first) == {"prompt", "chosen", "rejected"}
