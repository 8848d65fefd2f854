"""STaR for code (issue 29): a code dataset file through ``sample``, ``rsft``, ``export`` and
``passk``, and ``evaluate``'s selection by the tests a prompt shows.

``examples/code_world.jsonl`` is MBPP's shape (``text``, ``code``, ``test_list``) holding
code-world problems, so the shipped code policy answers them: it is sampled on the real vLLM
engine, every record's ``correct`` is checked against an independent sandbox run of the row's
tests, and ``rsft`` must train only on programs that pass them. Each command runs as its CLI
in a subprocess (``conftest.cli``: a hung one is killed with its engine).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from conftest import cli, rows
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from bon_server.answers import AnswerGroups
from bon_server.sandbox import extract_program, run_tests_sync
from bon_server.selectors import verifier
from bon_server.tasks import get_task
from bon_server.tasks.code import parse_question, sample_problems
from bon_server.tasks.dataset import DatasetTask
from verifier_training.data.records import SampleRecord, read_samples, write_jsonl
from verifier_training.evaluate.metrics import pick

ROOT = Path(__file__).resolve().parents[1]
POLICY = str(ROOT / "bon_server" / "embedded" / "code-policy")
DATASET = str(ROOT / "examples" / "code_world.jsonl")
NAME = "dataset:code_world"
TASK = DatasetTask(DATASET)  # the CLI's defaults: 20% held out
TESTS = {r["text"]: r["test_list"] for r in rows(Path(DATASET))}
TRAINING = {p.question for p in TASK.training}
HELD_OUT = {p.question for p in TASK.held_out}


def passes_its_tests(question: str, completion: str) -> bool:
    """The row's tests after the completion's program, in the sandbox (not the task's
    checker: an independent run)."""
    tests = TESTS[question]
    report = run_tests_sync(extract_program(completion), tests)
    return report.total == len(tests) and report.passed == report.total


def test_the_file_is_the_code_worlds_problems_in_mbpps_shape():
    assert TASK.shape == "code" and TASK.checker.name == "tests"
    assert len(TRAINING) == 34 and len(HELD_OUT) == 6 and not TRAINING & HELD_OUT
    for row in rows(Path(DATASET)):
        world = parse_question(row["text"])
        assert world is not None and world.hidden_tests == row["test_list"]
        assert passes_its_tests(row["text"], row["code"])


def assert_trained(model_dir: Path) -> None:
    """Its weights moved from the policy's, and it loads in transformers."""
    moved = load_file(model_dir / "model.safetensors")
    init = load_file(Path(POLICY) / "model.safetensors")
    assert any(not torch.equal(moved[k], init[k]) for k in init)
    AutoModelForCausalLM.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> list[SampleRecord]:
    out = tmp_path_factory.mktemp("code-sample") / "samples.jsonl"
    assert cli("sample", "--policy", POLICY, "--dataset", DATASET, "--problems", "100",
               "-k", "4", "--out", str(out), "--no-progress", log=out.with_suffix(".log")) == 0
    return read_samples(str(out))


@pytest.mark.engine
def test_sample_checks_every_program_by_the_files_tests(samples):
    assert {r.task for r in samples} == {NAME}
    assert len({r.question for r in samples}) * 4 == len(samples)
    for r in samples:
        assert r.correct == passes_its_tests(r.question, r.completion), r
    right = sum(r.correct for r in samples) / len(samples)
    assert 0 < right < 1, right  # the policy's pass@1 is about 0.3


@pytest.mark.engine
def test_export_keeps_passing_programs_and_pairs_them_over_failing_ones(samples, tmp_path):
    records = tmp_path / "samples.jsonl"
    write_jsonl(str(records), samples)
    out = tmp_path / "export"
    assert cli("export", "--records", str(records), "--dataset", DATASET, "--out-dir", str(out),
               log=tmp_path / "export.log") == 0
    rsft = rows(out / "rsft.jsonl")
    assert rsft and len(rsft) <= sum(r.correct for r in samples)
    for row in rsft:
        user, assistant = row["messages"]
        assert passes_its_tests(user["content"], assistant["content"])
    for pair in rows(out / "dpo.jsonl"):
        question = pair["prompt"][-1]["content"]
        assert passes_its_tests(question, pair["chosen"][-1]["content"])
        assert not passes_its_tests(question, pair["rejected"][-1]["content"])
    orm = rows(out / "orm.jsonl")
    assert {row["label"] for row in orm} == {True, False}
    for row in orm:  # one row a distinct program of a problem, labelled by its tests
        assert row["label"] == passes_its_tests(row["prompt"][-1]["content"],
                                                row["completion"][-1]["content"])


@pytest.mark.engine
def test_rsft_trains_only_on_programs_that_pass_their_tests(tmp_path):
    out = tmp_path / "rsft"
    assert cli("rsft", "--policy", POLICY, "--dataset", DATASET, "--rule", "checker",
               "--rounds", "1", "-k", "4", "--problems", "100", "--steps", "2",
               "--batch-size", "4", "--eval-problems", "0", "--no-progress", "--out", str(out),
               log=tmp_path / "rsft.log") == 0
    round_dir = out / "round-1"
    sampled = read_samples(str(round_dir / "samples.jsonl"))
    assert {r.question for r in sampled} == TRAINING  # never a held-out problem
    for r in sampled:
        assert r.correct == passes_its_tests(r.question, r.completion)
    kept = rows(round_dir / "kept.jsonl")
    assert kept
    for row in kept:
        assert passes_its_tests(row["question"], row["completion"])
    trained = rows(round_dir / "train_rows.jsonl")
    assert [t["completion"][-1]["content"] for t in trained] == [k["completion"] for k in kept]
    assert_trained(round_dir)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == NAME and summary["rounds"][0]["kept_right"] == 1.0


@pytest.mark.engine
def test_passk_on_the_files_held_out_part(tmp_path):
    out = tmp_path / "passk.json"
    assert cli("passk", "--model", POLICY, "--dataset", DATASET, "--problems", "6", "-k", "4",
               "--json", str(out), log=tmp_path / "passk.log") == 0
    result = json.loads(out.read_text())
    assert result["problems"] == 6
    assert 0 <= result["pass@1"] <= result["pass@4"] <= 1


# ----------------------------------------------------- evaluate: the tests as a selector


def world_records(tmp_path: Path) -> Path:
    """Three code-world problems, 8 candidates each: the right program twice, a lookup table
    of the prompt's examples once (it passes the visible tests, fails the hidden ones) and
    one wrong program five times (the majority)."""
    code = get_task("code")
    records = []
    for i, problem in enumerate(sample_problems(3, seed=77)):
        lookup = "\n".join(
            [f"def {problem.name}(*args):", "    return {"]
            + [f"        {t.split(' == ')[0].split('(', 1)[1][:-1]!r}: {t.split(' == ')[1]},"
               for t in problem.visible_tests]
            + ["    }[', '.join(map(str, args))]"])
        wrong = problem.answer.rsplit("\n", 1)[0] + "\n    return 12345"
        texts = [f"```python\n{p}\n```" for p in
                 [problem.answer] * 2 + [lookup] + [wrong] * 5]
        answers = AnswerGroups(code.answer_rules).add(texts)
        for j, (text, answer) in enumerate(zip(texts, answers, strict=True)):
            records.append(SampleRecord(
                problem_id=f"eval-77-{i}", question=problem.question,
                reference=problem.answer, completion=text, answer=answer,
                correct=code.check(problem, text), policy="scripted", temperature=1.0,
                top_p=1.0, max_tokens=128, seed=0, sample_index=j, finish_reason="stop",
                completion_tokens=10, task="code"))
    path = tmp_path / "records.jsonl"
    write_jsonl(str(path), records)
    return path


def test_evaluate_selects_by_the_visible_tests_over_the_majority(tmp_path):
    records = world_records(tmp_path)
    got = [r.correct for r in read_samples(str(records))]
    assert got == [True, True, False, False, False, False, False, False] * 3
    code = get_task("code")
    lookups = read_samples(str(records))[2::8]
    assert all(code.partial_checks(r.problem(), r.completion)["visible_tests"]
               for r in lookups)  # the lookup passes what the prompt shows
    out = tmp_path / "eval"
    assert cli("evaluate", "--records", str(records), "--partial-checks", "--out-dir",
               str(out), "--subsets", "4", "--no-progress", log=tmp_path / "eval.log") == 0
    curve = json.loads((out / "eval.json").read_text())["curve"]
    at8 = {method: by_n["8"]["accuracy"] for method, by_n in curve.items()}
    # the wrong program's five votes win; the visible tests leave the right program and the
    # lookup, and the right one's two votes break the tie
    assert at8 == {"pass@1": 0.25, "majority": 0.0, "visible_tests": 1.0, "oracle": 1.0}


def test_an_orm_trains_on_test_outcomes_and_is_evaluated_beside_the_tests(tmp_path):
    records = world_records(tmp_path)
    orm = tmp_path / "orm"
    assert cli("train-orm", "--records", str(records), "--base", POLICY, "--out", str(orm),
               "--steps", "2", "--batch-size", "8", "--val-frac", "0.34", "--no-progress",
               log=tmp_path / "orm.log") == 0
    out = tmp_path / "eval"
    assert cli("evaluate", "--records", str(records), "--orm", str(orm), "--partial-checks",
               "--out-dir", str(out), "--subsets", "4", "--no-progress",
               log=tmp_path / "eval.log") == 0
    result = json.loads((out / "eval.json").read_text())
    at8 = {method: by_n["8"]["accuracy"] for method, by_n in result["curve"].items()}
    assert set(at8) == {"pass@1", "majority", "visible_tests", "visible_tests+orm",
                        "weighted_majority_orm", "orm", "oracle"}
    scores = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert len(scores) == 24 and all(0 <= s["orm"] <= 1 for s in scores)
    assert result["pairwise_accuracy"]["orm"] is not None


def test_a_test_score_ranks_first_and_the_verifier_breaks_ties():
    class C:
        def __init__(self, answer, correct, score, passed):
            self.answer, self.correct, self.orm, self.passed = answer, correct, score, passed

    method = pick(verifier, lambda c: c.orm, lambda c: c.passed)
    # the verifier's favourite fails a test; of the two that pass all, the verifier's pick
    assert method([C("a", False, 0.9, 0.5), C("b", False, 0.2, 1.0),
                   C("c", True, 0.6, 1.0)]) == 1.0
    assert method([C("a", False, 0.9, 0.5), C("b", True, 0.7, 1.0),
                   C("c", False, 0.6, 1.0)]) == 1.0
    rng = random.Random(0)
    cands = [C(str(i), i == 3, rng.random(), 0.0) for i in range(6)]
    assert method(cands) == float(max(cands, key=lambda c: c.orm).correct)  # no test passed
