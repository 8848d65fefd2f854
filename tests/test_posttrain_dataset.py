"""rsft, dpo and distill on a user's dataset file (issue 27): the embedded arithmetic policy
sampled on the real vLLM engine over ``examples/gsm8k_arith.jsonl`` with a system prompt,
trained with TRL for two steps, and what each command wrote checked against the file.

What could go wrong, and is checked: a held-out question in the training data (the file's
held-out part is only ever measured on), training chats that ask the question without the
dataset's ``--system-prompt`` (or otherwise than sampling asked it), records that name another
task, a model directory that does not load. Each command runs as its CLI in a subprocess, as
in ``test_post_training.py``; one ``rsft`` run is shared, and ``dpo`` reuses its samples
(``--reuse-from``), so two engines start in all (rsft's and distill's teacher's). No policy is
measured (``--eval-problems 0``): ``test_post_training.py`` measures them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import cli, rows
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from bon_server.tasks.dataset import DatasetTask
from verifier_training.data.records import read_samples

ROOT = Path(__file__).resolve().parents[1]
POLICY = str(ROOT / "bon_server" / "embedded" / "arith-policy")
DATASET = str(ROOT / "examples" / "gsm8k_arith.jsonl")
NAME = "dataset:gsm8k_arith"
SYSTEM = "You are a helpful assistant that is good at arithmetic."
DATA = ["--dataset", DATASET, "--system-prompt", SYSTEM]
# more problems than the file's training part: every training problem is drawn, once
TINY = ["--problems", "100", "--steps", "2", "--batch-size", "4", "--eval-problems", "0",
        "--no-progress"]
TASK = DatasetTask(DATASET, system_prompt=SYSTEM)  # the CLI's defaults: 20% held out
TRAINING = {p.question for p in TASK.training}
HELD_OUT = {p.question for p in TASK.held_out}


def asked(question: str) -> str:
    """The text the engine renders for a sampled dataset question: the policy's chat template
    with the system message, written out (``conftest.rendered`` without one)."""
    return f"<|bos|><|system|>{SYSTEM}<|end|><|user|>{question}<|end|><|assistant|>"


def assert_trained_on_the_file(model_dir: Path, trainer: str, answers: list[str]) -> None:
    """``train_rows.jsonl`` holds one chat per example, each its ``answers`` (the assistant
    turns, in order) asked as sampling asked the question: after the system prompt, a
    training question of the file, never a held-out one; the record names the dataset."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    trained = rows(model_dir / "train_rows.jsonl")
    assert len(trained) == len(answers) > 0
    for row, answer in zip(trained, answers, strict=True):
        system, user = row["prompt"]
        assert system == {"role": "system", "content": SYSTEM}
        assert user["role"] == "user" and user["content"] in TRAINING
        assert user["content"] not in HELD_OUT
        text = tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        assert text == asked(user["content"])
        turn = row["completion"] if "completion" in row else row["chosen"]
        assert turn == [{"role": "assistant", "content": answer}]
    config = json.loads((model_dir / "training_config.json").read_text())
    assert config["data"]["task"] == NAME
    assert config["training"]["trainer"] == trainer
    assert config["training"]["system_prompt"] == SYSTEM
    assert config["flags"]["dataset"] == DATASET


def assert_servable(model_dir: Path) -> None:
    """A model directory like the embedded ones, its weights moved from the init: it loads in
    transformers and answers a held-out question asked with the system prompt."""
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json", "training_config.json"):
        assert (model_dir / name).exists(), name
    moved, init = load_file(model_dir / "model.safetensors"), load_file(
        Path(POLICY) / "model.safetensors")
    assert any(not torch.equal(moved[k], init[k]) for k in init)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    question = sorted(HELD_OUT)[0]
    ids = tok(asked(question), add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=40,
                         do_sample=False)
    assert tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


@pytest.fixture(scope="module")
def rsft_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rsft-dataset") / "checker"
    assert cli("rsft", "--policy", POLICY, *DATA, "--rule", "checker", "--rounds", "1",
               "-k", "4", "--out", str(out), *TINY, log=out.with_suffix(".log")) == 0
    return out


def test_the_file_has_both_parts() -> None:
    # what the other tests lean on: 33 training problems, 7 held out
    assert len(TRAINING) == 33 and len(HELD_OUT) == 7 and not TRAINING & HELD_OUT


@pytest.mark.engine
def test_rsft_samples_the_training_part_and_trains_on_its_right_answers(rsft_run: Path) -> None:
    round_dir = rsft_run / "round-1"
    samples = read_samples(str(round_dir / "samples.jsonl"))
    assert {r.task for r in samples} == {NAME}
    # every training problem k times, no held-out one
    assert {r.question for r in samples} == TRAINING and len(samples) == 4 * len(TRAINING)
    for r in samples:
        assert r.correct == TASK.check(TASK.parse(r.question), r.completion)
    kept = rows(round_dir / "kept.jsonl")
    assert kept, "the policy answers some of 33 problems right in 4 tries (pass@1 about 0.45)"
    for row in kept:
        assert TASK.check(TASK.parse(row["question"]), row["completion"])
    assert_trained_on_the_file(round_dir, "trl.SFTTrainer", [row["completion"] for row in kept])
    assert_servable(round_dir)
    summary = json.loads((rsft_run / "summary.json").read_text())
    assert summary["task"] == NAME and summary["rounds"][0]["kept_right"] == 1.0
    assert summary["start"] is None and "after" not in summary["rounds"][0]  # not measured


@pytest.mark.engine
def test_dpo_pairs_right_over_wrong_answers_to_the_files_questions(rsft_run: Path,
                                                                    tmp_path: Path) -> None:
    out = tmp_path / "dpo"
    assert cli("dpo", "--policy", POLICY, *DATA, "--rounds", "1", "--reuse-from", str(rsft_run),
               "--out", str(out), *TINY, log=tmp_path / "dpo.log") == 0
    pairs = rows(out / "round-1" / "pairs.jsonl")
    assert pairs
    for pair in pairs:
        problem = TASK.parse(pair["question"])
        assert TASK.check(problem, pair["chosen"]) and not TASK.check(problem, pair["rejected"])
    assert_trained_on_the_file(out / "round-1", "trl.DPOTrainer", [p["chosen"] for p in pairs])
    rejected = [r["rejected"][0]["content"] for r in rows(out / "round-1" / "train_rows.jsonl")]
    assert rejected == [p["rejected"] for p in pairs]
    assert_servable(out / "round-1")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == NAME and summary["rounds"][0]["samples_reused"] is True


@pytest.mark.engine
def test_samples_that_hold_held_out_questions_are_refused(rsft_run: Path,
                                                          tmp_path: Path) -> None:
    # another --held-out moves some of rsft's training questions into the held-out part
    out = tmp_path / "dpo"
    log = tmp_path / "dpo.log"
    assert cli("dpo", "--policy", POLICY, *DATA, "--held-out", "0.9", "--rounds", "1",
               "--reuse-from", str(rsft_run), "--out", str(out), *TINY, log=log) == 1
    assert f"held-out questions of {NAME} among the training samples" in log.read_text()
    assert not (out / "round-1" / "model.safetensors").exists()


@pytest.mark.engine
def test_samples_asked_after_another_system_prompt_are_refused(rsft_run: Path,
                                                               tmp_path: Path) -> None:
    # the records do not hold the system prompt: training after another one would teach
    # answers to a prompt the policy was never asked
    out, log = tmp_path / "dpo", tmp_path / "dpo.log"
    assert cli("dpo", "--policy", POLICY, "--dataset", DATASET, "--rounds", "1",
               "--reuse-from", str(rsft_run), "--out", str(out), *TINY, log=log) == 1
    assert f"sampled after the system prompt {SYSTEM!r}, not None" in log.read_text()
    assert not (out / "round-1" / "samples.jsonl").exists()


@pytest.mark.engine
def test_distill_learns_the_teachers_picks_of_the_training_part(tmp_path: Path) -> None:
    out = tmp_path / "distill"
    assert cli("distill", "--teacher", POLICY, "--teacher-best-of", "4", "--student", POLICY,
               *DATA, "--filters", "none,checker", "--out", str(out), *TINY,
               log=tmp_path / "distill.log") == 0
    teacher = read_samples(str(out / "teacher.jsonl"))
    assert {r.task for r in teacher} == {NAME}
    assert {r.question for r in teacher} == TRAINING and len(teacher) == 4 * len(TRAINING)
    solutions = read_samples(str(out / "solutions.jsonl"))
    assert [r.question for r in solutions] == list(dict.fromkeys(r.question for r in teacher))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == NAME
    right = [r for r in solutions if r.correct]
    assert right, "the policy's majority of 4 is right on some of 33 problems"
    for name, kept in (("none", solutions), ("checker", right)):
        student = out / f"student-{name}"
        assert summary["students"][name]["kept"] == len(kept)
        assert_trained_on_the_file(student, "trl.SFTTrainer",
                                   [r.completion.strip() for r in kept])
        assert_servable(student)


@pytest.mark.parametrize("command, seed", [("rsft", "1233"), ("distill", "1234")])
def test_a_training_stream_that_is_the_held_out_one_is_refused(command, seed, capsys):
    from verifier_training.posttrain import distill, rsft

    argv = ["--out", "unused", "--problem-seed", seed, *DATA]
    with pytest.raises(SystemExit) as exc:
        if command == "rsft":
            rsft.parse_args(argv)
        else:
            distill.parse_args(["--teacher", POLICY, "--student", POLICY, *argv])
    assert exc.value.code == 2
    assert "held-out problems" in capsys.readouterr().err
