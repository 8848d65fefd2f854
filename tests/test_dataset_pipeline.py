"""Your data through the verifier chain, on the real vLLM engine with the embedded arithmetic
policy: ``sample --dataset`` on the GSM8K- and MATH-shaped example files (references written
as ``1,234``, ``\\frac{2468}{2}``, ``1234.0``), and ``pipeline --dataset`` end to end.

Each command runs as its CLI in a subprocess, as a user runs it. ``correct`` (math-verify
against the file's reference) is compared with an independent check: the completion's last
number against the value of the arithmetic expression the question asks about.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from bon_server.tasks.arith import parse_question

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parents[1]
POLICY = "bon_server/embedded/arith-policy"
K = 4
PROBLEMS = 12


def cli(*args: str, log: Path) -> str:
    """``python -m verifier_training ARGS`` from the repository root; its output (the tail is
    shown on failure)."""
    with open(log, "w") as f:
        code = subprocess.run([sys.executable, "-m", "verifier_training", *args], stdout=f,
                              stderr=subprocess.STDOUT, timeout=560, cwd=ROOT).returncode
    text = log.read_text()
    assert code == 0, text[-4000:]
    return text


def last_number(text: str) -> int | None:
    found = re.findall(r"-?\d+", text.replace(",", ""))
    return int(found[-1]) if found else None


@pytest.mark.parametrize("name", ["gsm8k_arith.jsonl", "math_arith.jsonl"])
def test_sample_on_a_dataset_checks_answers_in_any_equivalent_form(tmp_path, name):
    out = tmp_path / "samples.jsonl"
    text = cli("sample", "--policy", POLICY, "--dataset", str(ROOT / "examples" / name),
               "--limit", str(PROBLEMS), "--held-out", "0", "-k", str(K), "--out", str(out),
               "--no-progress", log=tmp_path / "sample.log")
    records = [json.loads(line) for line in out.read_text().splitlines()]
    per_problem = Counter(r["problem_id"] for r in records)
    assert len(per_problem) == PROBLEMS and set(per_problem.values()) == {K}
    assert {r["task"] for r in records} == {f"dataset:{Path(name).stem}"}
    rows = [json.loads(line) for line in (ROOT / "examples" / name).read_text().splitlines()]
    assert {r["question"] for r in records} == {r.get("question", r.get("problem"))
                                                for r in rows[:PROBLEMS]}
    for r in records:
        value = parse_question(r["question"]).answer
        assert r["correct"] == (last_number(r["completion"]) == value), r
    # the references are not plain integers, and still some answers are right
    assert any(not re.fullmatch(r"-?\d+", r["reference"]) for r in records)
    assert 0 < sum(r["correct"] for r in records) < len(records)
    assert "checker math: no_answer" in text and f"wrote {PROBLEMS * K} records" in text


def test_pipeline_on_a_dataset_file_finishes_with_its_table(tmp_path):
    out = tmp_path / "run"
    args = ["pipeline", "--policy", POLICY, "--dataset", str(ROOT / "examples/gsm8k_arith.jsonl"),
            "--limit", "16", "--held-out", "4", "--step-separator", "line", "--out", str(out),
            "--train-k", "4", "--eval-k", "4", "--rollouts", "2", "--label-records", "24",
            "--eval-label-records", "8", "--subsets", "2", "--no-progress",
            "--orm-args", "--steps 2 --batch-size 8", "--prm-args", "--steps 2 --batch-size 8"]
    text = cli(*args, log=tmp_path / "pipeline.log")
    assert "=== pipeline summary ===" in text and "majority" in text
    assert "checker math:" in text and "train samples: 12 problems" in text
    for name in ("train_samples.jsonl", "eval_samples.jsonl", "train_labels.jsonl",
                 "eval_labels.jsonl", "orm/training_config.json", "prm/training_config.json",
                 "eval/eval.json", "export/rsft.jsonl", "export/dpo.jsonl", "pipeline.json"):
        assert (out / name).exists(), name
    evals = [json.loads(line) for line in (out / "eval_samples.jsonl").read_text().splitlines()]
    trains = [json.loads(line) for line in (out / "train_samples.jsonl").read_text().splitlines()]
    assert len({r["question"] for r in evals}) == 4  # the held-out part, and only it
    assert not {r["question"] for r in evals} & {r["question"] for r in trains}
    labels = [json.loads(line) for line in (out / "train_labels.jsonl").read_text().splitlines()]
    assert any(len(lab["steps"]) > 1 for lab in labels)  # one step a line, as asked
    rsft = [json.loads(line) for line in (out / "export/rsft.jsonl").read_text().splitlines()]
    right = {(r["question"], r["completion"].strip()) for r in trains if r["correct"]}
    assert {(m["messages"][0]["content"], m["messages"][1]["content"]) for m in rsft} == right
    # resumed: every stage's output is there, so no engine starts and the table comes again
    again = cli(*args, "--resume", log=tmp_path / "resume.log")
    assert "=== pipeline summary ===" in again and "engine_start" not in again
