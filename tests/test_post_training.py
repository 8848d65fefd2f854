"""rsft, dpo and distill end to end on a tiny budget: the embedded Countdown policy sampled on
the real vLLM engine, trained with TRL, and what each command wrote checked against its rule.

Each command runs as its CLI, in a subprocess (``python -m verifier_training ...``), as a user
runs it (and so vLLM's in-process engine leaves nothing behind in the test process). One
module-scoped ``rsft --rule checker`` run (one round) is shared: ``dpo`` and the verifier rule
reuse its round-1 samples (``--reuse-from``), as the README's comparisons do.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_orm, cli, rows
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from bon_server.tasks import get_task
from verifier_training.data.records import read_samples

pytestmark = pytest.mark.engine

POLICY = "bon_server/embedded/countdown-policy"
TASK = get_task("countdown")
TINY = ["--problems", "30", "-k", "6", "--steps", "3", "--batch-size", "4",
        "--eval-problems", "6", "--eval-k", "4", "--no-progress"]


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def assert_servable(model_dir: Path, trainer: str) -> None:
    """A model directory like the embedded ones: loads in transformers and answers; its
    weights moved from the init; training_config names the trainer."""
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json", "training_config.json"):
        assert (model_dir / name).exists(), name
    config = json.loads((model_dir / "training_config.json").read_text())
    assert config["training"]["trainer"] == trainer and config["init"]
    moved = load_file(model_dir / "model.safetensors")
    init = load_file(Path(config["init"]) / "model.safetensors")
    assert any(not torch.equal(moved[k], init[k]) for k in init)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    question = TASK.problems(1, 3)[0].question
    ids = tok.apply_chat_template([{"role": "user", "content": question}],
                                  add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)["input_ids"]
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=40,
                         do_sample=False)
    assert tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def assert_measured(figures: dict) -> None:
    """Held-out figures as the vLLM engine measured them on the checkpoint."""
    assert figures["problems"] == 6
    assert 0 <= figures["pass@1"] <= figures["pass@4"] <= 1
    assert 0 <= figures["majority@4"] <= figures["pass@4"]


@pytest.fixture(scope="module")
def checker_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rsft") / "checker"
    assert cli("rsft", "--policy", POLICY, "--rule", "checker", "--rounds", "1",
               "--out", str(out), *TINY, log=out.with_suffix(".log")) == 0
    return out


def test_rsft_checker_round_keeps_only_right_samples_and_trains(checker_run: Path) -> None:
    round_dir = checker_run / "round-1"
    samples = read_samples(str(round_dir / "samples.jsonl"))
    assert len(samples) == 30 * 6 and {r.task for r in samples} == {"countdown"}
    kept = rows(round_dir / "kept.jsonl")
    right = {(r.question, r.completion.strip()) for r in samples if r.correct}
    assert kept, "the embedded policy solves some of 30 problems in 6 tries (pass@8 is 0.4)"
    for row in kept:
        assert (row["question"], row["completion"]) in right
        assert TASK.check(TASK.parse(row["question"]), row["completion"])
    per_problem = {}
    for row in kept:
        per_problem.setdefault(row["problem_id"], []).append(row["completion"])
    assert all(1 <= len(v) <= 2 and len(set(v)) == len(v) for v in per_problem.values())
    assert_servable(round_dir, "trl.SFTTrainer")
    result = summary(checker_run)
    assert result["rule"] == "checker" and len(result["rounds"]) == 1
    assert_measured(result["start"])
    assert_measured(result["rounds"][0]["after"])
    assert result["rounds"][0]["kept"] == len(kept) and result["rounds"][0]["kept_right"] == 1.0


def test_rsft_resumes_without_redoing_a_round(checker_run: Path) -> None:
    before = (checker_run / "round-1" / "model.safetensors").stat().st_mtime_ns
    assert cli("rsft", "--policy", POLICY, "--rounds", "1", "--out", str(checker_run), *TINY,
               log=checker_run.with_suffix(".resume.log")) == 0
    assert (checker_run / "round-1" / "model.safetensors").stat().st_mtime_ns == before


def test_rsft_verifier_rule_on_the_same_samples(checker_run: Path, tmp_path: Path) -> None:
    orm = build_tiny_orm(tmp_path / "orm")
    out = tmp_path / "verifier"
    assert cli("rsft", "--policy", POLICY, "--rule", "verifier", "--orm", str(orm),
               "--selector", "verifier", "--per-problem", "1", "--rounds", "1",
               "--reuse-from", str(checker_run),
               "--out", str(out), *TINY, "--eval-problems", "0",  # measured: the checker run's
               log=tmp_path / "verifier.log") == 0
    assert (out / "round-1" / "samples.jsonl").read_text() == \
        (checker_run / "round-1" / "samples.jsonl").read_text()
    kept = rows(out / "round-1" / "kept.jsonl")
    assert len({row["problem_id"] for row in kept}) == len(kept) == 30  # one per problem
    assert all(isinstance(row["score"], float) for row in kept)
    result = summary(out)
    assert result["start"] == summary(checker_run)["start"]
    assert result["rounds"][0]["samples_reused"] is True
    assert "after" not in result["rounds"][0]  # not measured (the same trainer as the checker
    # rule's, whose checkpoint is measured on the engine above)


def test_dpo_pairs_are_right_over_wrong(checker_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "dpo"
    assert cli("dpo", "--policy", POLICY, "--rounds", "1", "--reuse-from", str(checker_run),
               "--sft-weight", "0.5", "--out", str(out), *TINY,
               log=tmp_path / "dpo.log") == 0
    pairs = rows(out / "round-1" / "pairs.jsonl")
    assert pairs
    for pair in pairs:
        problem = TASK.parse(pair["question"])
        assert TASK.check(problem, pair["chosen"]) and not TASK.check(problem, pair["rejected"])
    assert len({(p["question"], p["chosen"], p["rejected"]) for p in pairs}) == len(pairs)
    assert_servable(out / "round-1", "trl.DPOTrainer")
    trained = json.loads((out / "round-1" / "training_config.json").read_text())["training"]
    assert trained["sft_weight"] == 0.5 and trained["pairs"] == len(pairs)
    result = summary(out)
    assert result["method"] == "dpo" and result["rounds"][0]["chosen_right"] == 1.0
    assert result["rounds"][0]["rejected_right"] == 0.0
    assert_measured(result["rounds"][0]["after"])


def test_dpo_refuses_the_control_rules(tmp_path: Path) -> None:
    assert cli("dpo", "--rule", "random", "--out", str(tmp_path / "unused"),
               log=tmp_path / "dpo.log") == 2
    assert "invalid choice: 'random'" in (tmp_path / "dpo.log").read_text()
    assert not (tmp_path / "unused").exists()


def test_distill_filters_the_teachers_solutions(tmp_path: Path) -> None:
    out = tmp_path / "distill"
    assert cli("distill", "--teacher", POLICY, "--teacher-best-of", "4", "--student", POLICY,
               "--filters", "none,checker", "--problems", "10", "--steps", "2",
               "--batch-size", "4", "--eval-problems", "0",
               "--out", str(out), "--no-progress", log=tmp_path / "distill.log") == 0
    teacher = read_samples(str(out / "teacher.jsonl"))
    solutions = read_samples(str(out / "solutions.jsonl"))
    assert len(teacher) == 40 and len(solutions) == 10
    result = summary(out)
    students = result["students"]
    assert students["none"]["kept"] == 10
    assert students["checker"]["kept"] == sum(r.correct for r in solutions)
    assert students["checker"].get("kept_right", 1.0) == 1.0
    # the students are not measured here (--eval-problems 0: rsft's and dpo's checkpoints
    # already went through vLLM); each loads in transformers and answers
    for name in ("none", "checker"):
        assert "pass@1" not in students[name]
        if students[name]["kept"]:
            assert_servable(out / f"student-{name}", "trl.SFTTrainer")
