"""train-orm and train-prm on the Trainer rails: the loss falls, a resumed run ends where an
uninterrupted one does (bit for bit), gradient accumulation, LoRA, and ``--base``.

A 2-layer random LlamaForCausalLM with the project tokenizer is the policy; 12 problems of
3 candidates each are the records. Every run is a few steps on one thread.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import arith_records
from safetensors.torch import load_file
from tiny_models import save_tiny
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    LlamaForCausalLM,
)

from bon_server.scorers.orm import ORMScorer, format_for_orm
from bon_server.types import Candidate
from verifier_training.data.records import (
    question_prompt,
    write_jsonl,
)
from verifier_training.train import orm as train_orm
from verifier_training.train import prm as train_prm
from verifier_training.train.tokenizer import build_tokenizer

FAST = ["--threads", "1", "--no-progress", "--val-frac", "0"]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A tiny policy, SampleRecords and StepLabelRecords: a + b * c with a wrong middle step
    (every later step bad) or a wrong last step."""
    tmp = tmp_path_factory.mktemp("trainer")
    tok = build_tokenizer()
    policy = save_tiny(LlamaForCausalLM, tmp / "policy", tok, tie_word_embeddings=True)
    samples, labels = arith_records()
    write_jsonl(str(tmp / "samples.jsonl"), samples)
    write_jsonl(str(tmp / "labels.jsonl"), labels)
    return {"policy": str(policy), "samples": str(tmp / "samples.jsonl"),
            "labels": str(tmp / "labels.jsonl"), "tmp": str(tmp)}


def orm_argv(data: dict[str, str], out: Path, *extra: str) -> list[str]:
    return ["--records", data["samples"], "--base", data["policy"], "--out", str(out), *FAST,
            *extra]


def prm_argv(data: dict[str, str], out: Path, *extra: str) -> list[str]:
    return ["--labels", data["labels"], "--base", data["policy"], "--out", str(out), *FAST,
            *extra]


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "model.safetensors")


def orm_train_loss(model, data: dict[str, str]) -> float:  # type: ignore[no-untyped-def]
    """Mean BCE of ``model`` on the training records (read as the server reads it)."""
    from verifier_training.data.records import read_samples

    records = read_samples(data["samples"])
    tok = build_tokenizer()
    scorer = ORMScorer(model.eval(), tok, batch_size=64)
    probs = scorer.score_texts([format_for_orm(tok, r.prompt, r.completion) for r in records])
    y = torch.tensor([float(r.correct) for r in records])
    return torch.nn.functional.binary_cross_entropy(torch.tensor(probs), y).item()


def prm_train_loss(model, tok, data: dict[str, str]) -> float:  # type: ignore[no-untyped-def]
    """Mean cross-entropy of ``model``'s step probabilities (read as the server reads them)
    against the soft labels of the training records."""
    from bon_server.scorers.steps import encode_steps
    from verifier_training.data.records import read_labels

    records = read_labels(data["labels"])
    encoded = [encode_steps(train_prm.FMT, tok, r.prompt, r.steps) for r in records]
    probs = torch.tensor([p for s in train_prm.step_probs(model.eval(), tok, encoded, 64)
                          for p in s])
    target = torch.tensor([t for r in records for t in r.soft_labels()])
    return torch.nn.functional.binary_cross_entropy(probs, target).item()


def assert_resumes(main, argv, out: Path, tmp: Path, mid: int, total: int) -> None:  # type: ignore[no-untyped-def]
    """``out`` holds an uninterrupted run of ``total`` steps with a checkpoint at step ``mid``:
    a run that had stopped there (that checkpoint, alone) and goes on with ``--resume last``
    ends on the same weights, bit for bit."""
    resumed = tmp / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    name = f"checkpoint-{mid}"
    shutil.copytree(out / "checkpoints" / name, resumed / "checkpoints" / name)
    assert main(argv(resumed) + ["--resume", "last"]) == 0
    whole, again = weights(out), weights(resumed)
    assert whole.keys() == again.keys()
    for name in whole:
        assert torch.equal(whole[name], again[name]), name
    record = json.loads((resumed / "training_config.json").read_text())
    assert record["resolved"]["steps_done"] == total
    assert record["resolved"]["resumed_from"] == "last"
    # and the smoothed loss went on from the checkpoint's
    first = json.loads((out / "training_config.json").read_text())
    assert record["result"]["final_smoothed_loss"] == first["result"]["final_smoothed_loss"]


def test_orm_loss_falls_and_a_resumed_run_ends_where_a_whole_one_does(data, tmp_path):
    out = tmp_path / "orm"

    def argv(o: Path) -> list[str]:
        return orm_argv(data, o, "--steps", "10", "--batch-size", "8", "--lr", "3e-3",
                        "--save-steps", "5")

    assert train_orm.main(argv(out)) == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "checkpoint-10", "checkpoint-5"]
    torch.manual_seed(0)  # the run's head init: --seed 0
    before = AutoModelForSequenceClassification.from_pretrained(data["policy"], num_labels=1)
    after = AutoModelForSequenceClassification.from_pretrained(out)
    assert orm_train_loss(after, data) < orm_train_loss(before, data) - 0.02
    assert_resumes(train_orm.main, argv, out, tmp_path, 5, 10)


def test_prm_loss_falls_and_a_resumed_run_ends_where_a_whole_one_does(data, tmp_path):
    out = tmp_path / "prm"

    def argv(o: Path) -> list[str]:
        return prm_argv(data, o, "--steps", "40", "--batch-size", "8", "--lr", "1e-3",
                        "--save-steps", "20", "--soft-labels")

    assert train_prm.main(argv(out)) == 0
    tok = AutoTokenizer.from_pretrained(out)  # with <|step|>
    torch.manual_seed(0)  # the run's head init and embedding resize: --seed 0
    before = AutoModelForTokenClassification.from_pretrained(data["policy"], num_labels=2)
    before.resize_token_embeddings(len(tok))
    after = AutoModelForTokenClassification.from_pretrained(out)
    assert prm_train_loss(after, tok, data) < prm_train_loss(before, tok, data) - 0.01
    assert_resumes(train_prm.main, argv, out, tmp_path, 20, 40)


def test_resume_last_without_a_checkpoint_is_a_clear_error(data, tmp_path):
    with pytest.raises(SystemExit, match="no checkpoint"):
        train_orm.main(orm_argv(data, tmp_path / "none", "--steps", "1", "--resume", "last"))


def test_accumulating_two_half_batches_is_one_whole_batch(data, tmp_path):
    # --bucket 1: a batch of 8 is the first 8 of the shuffled order, two batches of 4 its
    # halves. Adam's first step reads the gradient's direction: a dropped or replaced
    # micro-batch moves it; float rounding only moves weights by far less than the lr.
    base = ["--steps", "1", "--bucket", "1", "--lr", "1e-3", "--grad-clip", "0"]
    whole, halves = tmp_path / "whole", tmp_path / "halves"
    assert train_orm.main(orm_argv(data, whole, *base, "--batch-size", "8")) == 0
    assert train_orm.main(orm_argv(data, halves, *base, "--batch-size", "4",
                                   "--grad-accum", "2")) == 0
    one = AutoModelForSequenceClassification.from_pretrained(data["policy"], num_labels=1)
    start = dict(one.state_dict())
    a, b = weights(whole), weights(halves)
    moved = 0
    for name in a:
        if name in start:
            moved += int((a[name] - start[name]).abs().max() > 5e-4)
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=2e-5, msg=name)
    assert moved > 5  # the step did move the weights (a 1e-3 Adam step)


def test_lora_trains_adapters_only_and_saves_a_model_the_server_loads(data, tmp_path):
    out = tmp_path / "lora"
    assert train_orm.main(orm_argv(data, out, "--steps", "3", "--batch-size", "8", "--lora",
                                   "--lora-r", "2", "--lora-alpha", "4")) == 0
    policy, trained = weights(Path(data["policy"])), weights(out)
    # outside the adapters' linear layers nothing moved: embeddings, norms
    for name in ("model.embed_tokens.weight", "model.norm.weight",
                 "model.layers.0.input_layernorm.weight"):
        assert torch.equal(policy[name], trained[name]), name
    # the adapters merged in: a rank-2 change of each attention and MLP matrix
    delta = trained["model.layers.0.self_attn.q_proj.weight"] - policy[
        "model.layers.0.self_attn.q_proj.weight"]
    assert delta.abs().max() > 0 and torch.linalg.matrix_rank(delta, atol=1e-6) <= 2
    assert "score.weight" in trained  # the new head, trained in full
    record = json.loads((out / "training_config.json").read_text())
    assert record["resolved"]["lora"] is True
    scorer = ORMScorer.from_pretrained(str(out), device="cpu", dtype="float32")
    scores = asyncio.run(scorer.score(question_prompt("What is 1 + 2 * 3?"),
                                      [Candidate("= 1 + 6\n= 7\nThe answer is 7.", (), None,
                                                 "stop")]))
    assert 0.0 < scores[0] < 1.0


def test_lora_model_has_only_adapters_and_the_head_trainable(data):
    import argparse

    from verifier_training.train.trainer import with_lora

    model = AutoModelForSequenceClassification.from_pretrained(data["policy"], num_labels=1)
    args = argparse.Namespace(lora=True, lora_r=2, lora_alpha=4.0, lora_dropout=0.0)
    wrapped = with_lora(model, args, "SEQ_CLS")
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or ".score." in n for n in trainable)
    assert any(".score." in n for n in trainable) and any("lora_" in n for n in trainable)


@pytest.mark.parametrize("which", ["orm", "prm"])
def test_base_any_causal_lm_gets_the_head(data, tmp_path, which):
    tok = build_tokenizer()
    base = save_tiny(LlamaForCausalLM, tmp_path / "base", tok, hidden_size=96, head_dim=48)
    out = tmp_path / which
    make, main, cls, heads = {
        "orm": (orm_argv, train_orm.main, AutoModelForSequenceClassification, 1),
        "prm": (prm_argv, train_prm.main, AutoModelForTokenClassification, 2)}[which]
    argv = make(data, out, "--steps", "1", "--batch-size", "4")
    argv[argv.index("--base") + 1] = str(base)
    assert main(argv) == 0
    model = cls.from_pretrained(out)
    assert type(model).__name__ == f"Llama{cls.__name__.removeprefix('AutoModel')}"
    assert model.config.num_labels == heads
    assert model.config.hidden_size == 96  # the --base model's backbone, not the policy's
    record = json.loads((out / "training_config.json").read_text())
    assert record["model"]["init"] == str(base)


def test_sft_resumes_bit_for_bit_and_takes_the_library_flags(tmp_path):
    from verifier_training.train import sft

    tiny = ["--steps", "4", "--batch-size", "4", "--hidden-size", "32", "--layers", "1",
            "--heads", "2", "--intermediate-size", "64", "--warmup-steps", "1", "--threads", "1",
            "--no-progress", "--save-steps", "2"]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert sft.main(["--out", str(whole), *tiny]) == 0
    shutil.copytree(whole / "checkpoints" / "checkpoint-2",
                    resumed / "checkpoints" / "checkpoint-2")
    assert sft.main(["--out", str(resumed), *tiny, "--resume", "last"]) == 0
    a, b = weights(whole), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the resumed run drew the same stream: the skipped batches were drawn and dropped
    ra, rb = (json.loads((d / "training_config.json").read_text()) for d in (whole, resumed))
    assert ra["data"]["problems_drawn"] == rb["data"]["problems_drawn"]
    assert rb["training"]["resumed_from"] == "last"
