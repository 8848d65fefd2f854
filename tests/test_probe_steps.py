"""probe-steps: isolated-line checker on records; its AUC and its training loop."""

from __future__ import annotations

import json

import pytest

from verifier_training.probe_steps import arithmetic_lines, main, roc_auc
from verifier_training.records import SampleRecord, write_jsonl

POLICY = "bon_server/embedded/arith-policy"


def record(i: int, completion: str) -> SampleRecord:
    return SampleRecord(
        problem_id=f"p{i}", question="What is 1 + 1?", reference="2", completion=completion,
        answer=None, correct=False, policy=POLICY, temperature=1.0, top_p=1.0, max_tokens=64,
        seed=0, sample_index=0, finish_reason="stop", completion_tokens=len(completion))


def test_roc_auc():
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert roc_auc([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) == 0.0
    assert roc_auc([0.5, 0.5, 0.5], [True, False, True]) == 0.5
    assert roc_auc([0.3, 0.1, 0.3, 0.7], [True, False, False, True]) == 7 / 8  # 3 wins, 1 tie of 4
    assert roc_auc([0.1, 0.2], [True, True]) is None


def test_arithmetic_lines_labels_and_filters():
    r = record(0, "4 * 23 = 92\n17 + 92 = 108\n-108 - 9 = -117\nThe answer is 108.")
    assert arithmetic_lines([r], "+-*") == [
        ("4 * 23 = 92", True, "*"), ("17 + 92 = 108", False, "+"), ("-108 - 9 = -117", True, "-")]
    assert [op for _, _, op in arithmetic_lines([r], "+-")] == ["+", "-"]


@pytest.mark.parametrize("arch", ["bert", "llama", "policy"])
def test_probe_learns_an_easy_tell(tmp_path, arch, capsys):
    # every wrong line has a negative result, every right one a positive result: a tell that a
    # few seconds of training must find (AUC near 1), read the right way round (not near 0)
    rows = []
    for i in range(60):
        a, b = 2 + i % 23, 3 + i % 17
        rows.append(record(i, f"{a} + {b} = {a + b}\n{a} * {b} = -{a * b + 1}\nThe answer is 1."))
    train, held = tmp_path / "t.jsonl", tmp_path / "e.jsonl"
    write_jsonl(str(train), rows[:40])
    write_jsonl(str(held), rows[40:])
    out = tmp_path / "probe.json"
    assert main(["--train", str(train), "--eval", str(held), "--arch", arch, "--layers", "2",
                 "--minutes", "0.15", "--eval-every-min", "0.15", "--batch-size", "32",
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    last = result["history"][-1]
    assert last["steps"] > 0
    assert last["auc"]["all"] > 0.95
    assert last["auc"]["+"] is None  # only right `+` lines: no AUC
    assert result["held_out_unseen_share"] == 1.0
    assert "held-out ROC AUC" in capsys.readouterr().out
