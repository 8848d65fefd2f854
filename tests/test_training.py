"""Smoke training: five steps of train-orm and train-prm from a tiny random policy.

The "policy" is a 2-layer LlamaForCausalLM with the project tokenizer, built here; the saved
verifiers must load with the server's own ORMScorer / PRMScorer and score sensibly.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from bon_server.scorers.orm import ORMScorer
from bon_server.scorers.prm import PRMScorer
from bon_server.types import Candidate
from verifier_training.data.records import (
    SampleRecord,
    StepLabelRecord,
    question_prompt,
    write_jsonl,
)
from verifier_training.train import orm as train_orm
from verifier_training.train import prm as train_prm
from verifier_training.train.common import problem_batches
from verifier_training.train.tokenizer import build_tokenizer, save_tokenizer

SOLUTIONS = [
    ("What is 2 + 3 * 4?", "14", "= 2 + 12\n= 14\nThe answer is 14."),
    ("What is 2 + 3 * 4?", "14", "= 5 * 4\n= 20\nThe answer is 20."),
    ("What is 7 - 2?", "5", "= 5\nThe answer is 5."),
    ("What is 7 - 2?", "5", "= 4\nThe answer is 4."),
    ("What is 3 * 3 + 1?", "10", "= 9 + 1\n= 10\nThe answer is 10."),
    ("What is 3 * 3 + 1?", "10", "= 9 + 1\n= 11\nThe answer is 11."),
]


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> str:
    torch.manual_seed(0)
    tok = build_tokenizer()
    special = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                   pad_token_id=tok.pad_token_id)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         head_dim=32, max_position_embeddings=512, tie_word_embeddings=True,
                         **special)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(**special)
    path = tmp_path_factory.mktemp("models") / "policy"
    model.save_pretrained(path)
    save_tokenizer(tok, str(path))
    return str(path)


def samples(tmp: Path) -> str:
    records = [
        SampleRecord(
            problem_id=f"train-101-{i // 2:05d}", question=q, reference=ref, completion=text,
            answer=None, correct=text.endswith(f"is {ref}."), policy="tiny", temperature=1.0,
            top_p=1.0, max_tokens=128, seed=i // 2, sample_index=i % 2, finish_reason="stop",
            completion_tokens=len(text),
        )
        for i, (q, ref, text) in enumerate(SOLUTIONS)
    ]
    path = str(tmp / "samples.jsonl")
    write_jsonl(path, records)
    return path


def labels(tmp: Path) -> str:
    records = []
    for i, (q, ref, text) in enumerate(SOLUTIONS):
        steps = tuple(text.split("\n"))
        ok = text.endswith(f"is {ref}.")
        counts = tuple([4 if ok else 0] * len(steps)) if ok or len(steps) == 2 else (3, 0, 0)
        records.append(StepLabelRecord(
            problem_id=f"train-101-{i // 2:05d}", sample_index=i % 2, question=q, reference=ref,
            steps=steps, counts=counts, rollouts=4, inferred=(False,) * len(steps), correct=ok,
            policy="tiny", seed=0,
        ))
    path = str(tmp / "labels.jsonl")
    write_jsonl(path, records)
    return path


def candidates(texts: list[str]) -> list[Candidate]:
    return [Candidate(t, (), None, "stop") for t in texts]


def test_train_orm_smoke(policy: str, tmp_path: Path) -> None:
    out = tmp_path / "orm"
    assert train_orm.main(["--records", samples(tmp_path), "--out", str(out), "--init", policy,
                           "--steps", "5", "--batch-size", "4", "--val-frac", "0.34",
                           "--no-progress"]) == 0
    config = json.loads((out / "training_config.json").read_text())
    assert config["flags"]["steps"] == 5 and config["model"]["num_labels"] == 1
    assert config["data"]["train"] + config["data"]["val"] == len(SOLUTIONS)
    assert config["result"]["train_seconds"] >= 0 and "pairwise_accuracy" in config["result"]["val"]
    scorer = ORMScorer.from_pretrained(str(out), device="cpu", dtype="float32")
    prompt = question_prompt(SOLUTIONS[0][0])
    scores = asyncio.run(scorer.score(prompt, candidates([s[2] for s in SOLUTIONS[:2]])))
    assert len(scores) == 2 and all(0.0 < s < 1.0 for s in scores)


@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
def test_train_prm_smoke(policy: str, tmp_path: Path, soft: bool) -> None:
    out = tmp_path / "prm"
    argv = ["--labels", labels(tmp_path), "--out", str(out), "--init", policy, "--steps", "5",
            "--batch-size", "4", "--val-frac", "0.34", "--no-progress"]
    assert train_prm.main(argv + (["--soft-labels"] if soft else [])) == 0
    config = json.loads((out / "training_config.json").read_text())
    assert config["resolved"]["step_token_added"] is True
    assert config["resolved"]["labels"] == ("soft" if soft else "hard")
    assert "f1" in config["result"]["val"]
    # float32: the score checks below are exact; the format is detected (bon)
    scorer = PRMScorer.from_pretrained(str(out), device="cpu", dtype="float32")
    assert scorer.fmt.name == "bon"
    assert scorer.model.config.num_labels == 2
    assert scorer.model.get_input_embeddings().num_embeddings == len(scorer.tokenizer)
    prompt = question_prompt(SOLUTIONS[0][0])
    steps = asyncio.run(scorer.step_scores(prompt, candidates([SOLUTIONS[0][2], "oops"])))
    assert len(steps[0]) == 3 and len(steps[1]) == 1
    assert all(0.0 < p < 1.0 for s in steps for p in s)


def test_pairwise_loss_only_compares_within_a_problem() -> None:
    logits = torch.tensor([2.0, 0.0, 5.0, -5.0])
    y = torch.tensor([1.0, 0.0, 1.0, 0.0])
    # pairs: (0 > 1) in problem a, (2 > 3) in problem b; never across problems
    got = train_orm.pairwise_loss(logits, y, ["a", "a", "b", "b"])
    want = -(torch.nn.functional.logsigmoid(torch.tensor(2.0))
             + torch.nn.functional.logsigmoid(torch.tensor(10.0))) / 2
    assert torch.isclose(got, want)
    assert train_orm.pairwise_loss(logits, y, ["a", "b", "c", "d"]).item() == 0.0


def test_problem_batches_keep_problems_whole() -> None:
    import random

    problems = ["a", "a", "b", "c", "c", "c", "d"]
    batches = problem_batches(problems, 3, random.Random(0))
    seen = [next(batches) for _ in range(3)]
    for batch in seen:
        for pid in {problems[i] for i in batch}:
            assert sorted(i for i in batch if problems[i] == pid) == [
                i for i, p in enumerate(problems) if p == pid]
