"""SFT data and packing: labels cover only assistant turns; packed examples never see each other."""

from __future__ import annotations

import json
import random

import pytest
import torch
from tiny_models import tiny_config
from transformers import LlamaConfig, LlamaForCausalLM

from bon_server.tasks import get_task
from bon_server.tasks.arith import parse_question, reference_solution
from bon_server.tasks.base import EVAL_SEED, Stream
from verifier_training.train import chats, sft
from verifier_training.train.tokenizer import END, build_tokenizer
from verifier_training.train.trainer import lr_factor


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread is fastest, and far faster when other jobs share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_examples_label_only_assistant_turns():
    tok = build_tokenizer()
    args = sft.parse_args(["--out", "unused", "--system-frac", "0.5", "--multiturn-frac", "0.5"])
    stream = Stream(get_task("arith"), random.Random(0), set())
    kinds = set()
    for _ in range(60):
        ids, labels = chats.make_example(stream, tok, args)
        assert len(ids) == len(labels)
        text = tok.decode(ids)
        assert text.startswith("<|bos|>") and text.endswith(END)
        trained = tok.decode([t for t in labels if t != chats.IGNORE])
        answers = text.split("<|assistant|>")[1:]
        assert trained == "".join(a.split(END)[0] + END for a in answers)
        last_question = text.split("<|user|>")[-1].split(END)[0]
        assert answers[-1] == reference_solution(parse_question(last_question)) + END
        kinds.add(("<|system|>" in text, len(answers)))
    assert kinds == {(False, 1), (True, 1), (False, 2), (True, 2)}


def test_pack_keeps_examples_apart():
    torch.manual_seed(0)
    tok = build_tokenizer()
    args = sft.parse_args(["--out", "unused"])
    stream = Stream(get_task("arith"), random.Random(1), set())
    examples = [chats.make_example(stream, tok, args) for _ in range(8)]
    ids, labels, positions = chats.pack(examples, 160, tok.pad_token_id)
    assert ids.shape[0] < len(examples)  # several examples share a row
    assert int((labels != chats.IGNORE).sum()) == sum(
        sum(t != chats.IGNORE for t in y) for _, y in examples
    )
    model = LlamaForCausalLM(tiny_config(tok)).eval()
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=positions, use_cache=False).logits
        for r in range(ids.shape[0]):
            starts = (positions[r] == 0).nonzero().flatten().tolist() + [ids.shape[1]]
            for a, b in zip(starts, starts[1:], strict=False):
                alone = model(input_ids=ids[r : r + 1, a:b], use_cache=False).logits[0]
                torch.testing.assert_close(packed[r, a:b], alone, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["countdown", "paths"])
def test_examples_of_other_worlds_use_their_references_and_skip_held_out_prompts(name):
    task = get_task(name)
    tok = build_tokenizer(numbers=True)
    args = sft.parse_args(["--out", "unused", "--task", name])
    held_out = {p.question for p in task.problems(1000, EVAL_SEED)}
    # a stream that would otherwise start with held-out problems
    stream = Stream(task, random.Random(EVAL_SEED), held_out)
    seen = []
    for _ in range(40):
        ids, _ = chats.make_example(stream, tok, args)
        question = tok.decode(ids).split("<|user|>")[-1].split(END)[0]
        problem = task.parse(question)
        assert problem is not None and question not in held_out
        answer = tok.decode(ids).split("<|assistant|>")[-1].split(END)[0]
        assert task.check(problem, answer)
        seen.append(question)
    assert stream.skipped >= 40 and stream.drawn == stream.skipped + len(seen) + (
        stream.drawn - stream.skipped - len(seen)
    )


def test_lr_schedule():
    def at(step: int) -> float:  # 100 steps, 10 of warmup, down to a tenth
        return lr_factor(step, 100, 10, 0.1)

    assert at(0) == 0.1
    assert at(9) == 1.0
    assert abs(at(10) - 1.0) < 1e-9
    assert abs(at(100) - 0.1) < 1e-9
    assert all(at(s) >= at(s + 1) for s in range(10, 100))


def test_main_smoke(tmp_path):
    out = tmp_path / "policy"
    argv = [
        "--out",
        str(out),
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--hidden-size",
        "32",
        "--layers",
        "1",
        "--heads",
        "2",
        "--intermediate-size",
        "64",
        "--warmup-steps",
        "1",
        "--threads",
        "1",
        "--no-progress",
    ]
    assert sft.main(argv) == 0
    names = {p.name for p in out.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "training_config.json",
    } <= names
    record = json.loads((out / "training_config.json").read_text())
    assert record["flags"]["steps"] == 2 and record["flags"]["seed"] == 0
    assert record["data"]["task"] == "arith" and record["model"]["tokenizer"] == "char"
    config = json.loads((out / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, 0)
    if (
        out / "generation_config.json"
    ).exists():  # only token ids: vLLM applies sampling fields as defaults
        generation = json.loads((out / "generation_config.json").read_text())
        assert set(generation) <= {
            "bos_token_id",
            "eos_token_id",
            "pad_token_id",
            "transformers_version",
            "_from_model_config",
        }


def test_mimetic_init_makes_every_head_a_copier():
    config = LlamaConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, intermediate_size=64)
    model = LlamaForCausalLM(config)
    sft.mimetic_attention_init(model)
    for layer in model.model.layers:
        attn = layer.self_attn
        assert torch.equal(attn.q_proj.weight, attn.k_proj.weight)
        ov = attn.o_proj.weight @ attn.v_proj.weight  # hidden x hidden
        # near the identity: its diagonal dominates (a random init's is about zero)
        assert ov.diagonal().mean() > 0.8
        assert (ov - torch.diag(ov.diagonal())).abs().mean() < 0.25


def test_prompt_loss_trains_on_the_prompt_too():
    tok = build_tokenizer(arrows=True)
    args = sft.parse_args(["--out", "unused", "--task", "paths", "--prompt-loss",
                           "--system-frac", "0", "--multiturn-frac", "0"])
    stream = Stream(get_task("paths"), random.Random(0), set())
    ids, labels = chats.make_example(stream, tok, args)
    assert labels == ids


def test_held_out_loss_splits_labels_from_the_rest():
    tok = build_tokenizer(arrows=True)
    args = sft.parse_args(["--out", "unused", "--task", "paths", "--system-frac", "1",
                           "--multiturn-frac", "1"])
    held_out = chats.HeldOutLoss(get_task("paths"), tok, args, count=8)
    # the held-out problems' plain chats: no system message or earlier turn, whatever the flags
    text = tok.decode(held_out.ids[held_out.ids != tok.pad_token_id].tolist())
    assert "<|system|>" not in text and text.count("<|user|>") == 8
    assert get_task("paths").problems(1, EVAL_SEED)[0].question in text
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, intermediate_size=64)
    torch.manual_seed(0)
    found = held_out(LlamaForCausalLM(config))
    # an untrained model: about ln(vocab) everywhere
    assert set(found) == {"answer", "labels", "other", "first"}  # first: the first answer token
    assert all(abs(v - torch.log(torch.tensor(len(tok))).item()) < 1.0 for v in found.values())
