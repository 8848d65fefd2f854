"""probe-steps: isolated-line checker on records; its AUC and its training loop."""

from __future__ import annotations

import json

import pytest

from verifier_training.data.records import SampleRecord, write_jsonl
from verifier_training.research.probe_steps import arithmetic_lines, main

POLICY = "bon_server/embedded/arith-policy"


def record(i: int, completion: str) -> SampleRecord:
    return SampleRecord(
        problem_id=f"p{i}", question="What is 1 + 1?", reference="2", completion=completion,
        answer=None, correct=False, policy=POLICY, temperature=1.0, top_p=1.0, max_tokens=64,
        seed=0, sample_index=0, finish_reason="stop", completion_tokens=len(completion))


def test_arithmetic_lines_labels_and_filters():
    r = record(0, "4 * 23 = 92\n17 + 92 = 108\n-108 - 9 = -117\nThe answer is 108.")
    assert arithmetic_lines([r], "+-*") == [
        ("4 * 23 = 92", True, "*"), ("17 + 92 = 108", False, "+"), ("-108 - 9 = -117", True, "-")]
    assert [op for _, _, op in arithmetic_lines([r], "+-")] == ["+", "-"]


@pytest.mark.parametrize("arch", ["bert", "llama", "policy"])
def test_probe_learns_an_easy_tell(tmp_path, arch, capsys):
    # every wrong line has a negative result, every right one a positive result: a tell that a
    # fixed number of steps must find (AUC near 1), read the right way round (not near 0); the
    # step count, not the time budget, ends training, so a loaded machine cannot cut it short
    rows = []
    for i in range(60):
        a, b = 2 + i % 23, 3 + i % 17
        rows.append(record(i, f"{a} + {b} = {a + b}\n{a} * {b} = -{a * b + 1}\nThe answer is 1."))
    train, held = tmp_path / "t.jsonl", tmp_path / "e.jsonl"
    write_jsonl(str(train), rows[:40])
    write_jsonl(str(held), rows[40:])
    out = tmp_path / "probe.json"
    assert main(["--train", str(train), "--eval", str(held), "--arch", arch, "--layers", "2",
                 "--minutes", "10", "--max-steps", "60", "--eval-every-min", "10",
                 "--batch-size", "32",
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    last = result["history"][-1]
    assert last["steps"] == 60
    assert last["auc"]["all"] > 0.95
    assert last["auc"]["+"] is None  # only right `+` lines: no AUC
    assert result["held_out_unseen_share"] == 1.0
    assert "held-out ROC AUC" in capsys.readouterr().out
