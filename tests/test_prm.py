"""PRMScorer on tiny random PRMs of every step format, built and saved here (no downloads).

Reference scores come from a direct forward pass on one unpadded sequence, read at
positions found by hand-written rules (not by ``encode_steps``).
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from tiny_models import save_tiny, step_tokenizer
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForTokenClassification,
)

from bon_server.scorers.base import check_aggregation
from bon_server.scorers.prm import PRMScorer
from bon_server.scorers.steps import STEP_FORMATS, encode_steps, format_steps, split_steps
from bon_server.types import Candidate, Message, Prompt
from verifier_training.train.tokenizer import save_tokenizer

FORMATS = list(STEP_FORMATS)
PROMPT = Prompt(messages=(Message("user", "What is 2 + 3 * 4?"),))
TEXTS = [
    "3 * 4 = 12\n2 + 12 = 14\nThe answer is 14.",
    "2 + 3 = 5\nThe answer is 20.",
    "3 * 4 = 12\n\n2 + 12 = 14\nCheck: 14 - 12 = 2, and 12 / 4 = 3.\nSo 2 + 3 * 4 = 14.\n"
    "The answer is 14.",
]


def build_tiny_prm(path: Path, name: str, seed: int = 0) -> Path:
    classify = STEP_FORMATS[name].head == "classify"
    model_cls = LlamaForTokenClassification if classify else LlamaForCausalLM
    tok = step_tokenizer(name)
    save_tiny(model_cls, path, tok, seed, num_labels=2)
    save_tokenizer(tok, str(path))  # the project's saver keeps the chat template file
    return path


@pytest.fixture(scope="module")
def prm_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("prms")
    return {name: build_tiny_prm(root / name, name, seed=i) for i, name in enumerate(FORMATS)}


@pytest.fixture(scope="module")
def scorers(prm_dirs: dict[str, Path]) -> dict[str, PRMScorer]:
    return {
        name: PRMScorer.from_pretrained(
            str(path), step_format=name, device="cpu", dtype="float32", batch_size=8
        )
        for name, path in prm_dirs.items()
    }


def candidate(text: str) -> Candidate:
    return Candidate(text=text, token_ids=(), cumulative_logprob=None, finish_reason="stop")


def expected_positions(scorer: PRMScorer, ids: list[int]) -> list[int]:
    """Where each step's score is read, by the rule each model family documents."""
    tokens = scorer.tokenizer.convert_ids_to_tokens(ids)
    name = scorer.fmt.name
    if name == "rlhflow":  # the position that predicts the assistant's "+"
        return [i for i in range(len(ids) - 1) if tokens[i : i + 2] == ["<|assistant|>", "+"]]
    tag = {"bon": "<|step|>", "qwen": "<extra_0>", "math_shepherd": "ки"}[name]
    return [i for i, t in enumerate(tokens) if t == tag]


def reference_scores(scorer: PRMScorer, prompt: Prompt, text: str) -> list[float]:
    """One unpadded forward pass of the model itself, read by hand."""
    tok = scorer.tokenizer
    formatted = format_steps(scorer.fmt, tok, prompt, split_steps(text))
    ids = tok.encode(formatted, add_special_tokens=scorer.fmt.name == "math_shepherd")
    ids = ids[-scorer.model.config.max_position_embeddings :]
    with torch.inference_mode():
        logits = scorer.model(input_ids=torch.tensor([ids])).logits[0].float()
    positions = expected_positions(scorer, ids)
    if scorer.fmt.head == "classify":
        return [torch.softmax(logits[p], -1)[1].item() for p in positions]
    plus = tok.convert_tokens_to_ids("+")
    minus = tok.convert_tokens_to_ids("-")
    return [torch.softmax(logits[p, [plus, minus]], -1)[0].item() for p in positions]


def step_scores(scorer: PRMScorer, texts: list[str], prompt: Prompt = PROMPT) -> list[list[float]]:
    return asyncio.run(scorer.step_scores(prompt, [candidate(t) for t in texts]))


def score(scorer: PRMScorer, texts: list[str], aggregation: str | None = None) -> list[float]:
    return asyncio.run(scorer.score(PROMPT, [candidate(t) for t in texts], aggregation))


# --- loading ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bon", "qwen", "math_shepherd"])
def test_auto_detects_the_format(prm_dirs, name):
    scorer = PRMScorer.from_pretrained(str(prm_dirs[name]), device="cpu", dtype="float32")
    assert scorer.kind == "prm"
    assert scorer.fmt is STEP_FORMATS[name]
    assert scorer.aggregation == "min"


def test_auto_refuses_a_plain_tokenizer(prm_dirs):
    # rlhflow's tokenizer is the project's own: nothing to detect, it must be named
    with pytest.raises(ValueError, match="name it explicitly with step_format"):
        PRMScorer.from_pretrained(str(prm_dirs["rlhflow"]), device="cpu", dtype="float32")


def test_loads_each_head(scorers):
    assert {name: type(s.model).__name__ for name, s in scorers.items()} == {
        "bon": "LlamaForTokenClassification",
        "qwen": "LlamaForTokenClassification",
        "math_shepherd": "LlamaForCausalLM",
        "rlhflow": "LlamaForCausalLM",
    }
    assert scorers["rlhflow"].plus_id == 20 and scorers["rlhflow"].minus_id == 22


def test_a_format_that_does_not_fit_the_model_is_refused(prm_dirs):
    with pytest.raises(ValueError, match="needs a \\*ForCausalLM model"):
        PRMScorer.from_pretrained(str(prm_dirs["bon"]), step_format="rlhflow", device="cpu")
    with pytest.raises(ValueError, match="not a single token"):
        PRMScorer.from_pretrained(str(prm_dirs["qwen"]), step_format="bon", device="cpu")
    with pytest.raises(ValueError, match="valid formats: bon, qwen"):
        PRMScorer.from_pretrained(str(prm_dirs["bon"]), step_format="shepherd", device="cpu")
    with pytest.raises(ValueError, match="valid aggregations"):
        PRMScorer.from_pretrained(str(prm_dirs["bon"]), aggregation="max", device="cpu")


def test_a_token_head_needs_two_labels(scorers):
    bon = scorers["bon"]
    config = bon.model.config.to_dict() | {"num_labels": 3, "id2label": None, "label2id": None}
    three = LlamaForTokenClassification(LlamaConfig.from_dict(config))
    with pytest.raises(ValueError, match="needs a 2-label token head, not 3"):
        PRMScorer(three, bon.tokenizer, STEP_FORMATS["bon"])


def test_qwen_prm_needs_trust_remote_code(prm_dirs, tmp_path):
    shutil.copytree(prm_dirs["qwen"], tmp_path / "qwen-prm")
    config_path = tmp_path / "qwen-prm" / "config.json"
    config = json.loads(config_path.read_text())
    config["architectures"] = ["Qwen2ForProcessRewardModel"]
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        PRMScorer.from_pretrained(str(tmp_path / "qwen-prm"), device="cpu", dtype="float32")


# --- scores ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", FORMATS)
def test_step_scores_match_a_direct_forward_pass(scorers, name):
    scorer = scorers[name]
    references = [reference_scores(scorer, PROMPT, t) for t in TEXTS]
    assert [len(r) for r in references] == [3, 2, 5]
    alone = [step_scores(scorer, [t])[0] for t in TEXTS]
    batched = step_scores(scorer, TEXTS)  # padded to the longest: must not move a score
    for ref, one, many in zip(references, alone, batched, strict=True):
        assert one == pytest.approx(ref, abs=1e-5)
        assert many == pytest.approx(ref, abs=1e-5)
        assert all(0.0 < s < 1.0 for s in many)
    # random weights still tell the steps apart: a misread position would show here
    assert len({round(s, 6) for r in references for s in r}) > 5


@pytest.mark.parametrize("name", ["bon", "rlhflow"])
def test_concurrent_requests_share_a_batch(scorers, name):
    scorer = scorers[name]
    other = Prompt(text="What is 7 - 2?")

    async def both():
        return await asyncio.gather(
            scorer.step_scores(PROMPT, [candidate(t) for t in TEXTS[:2]]),
            scorer.step_scores(other, [candidate("7 - 2 = 5\nThe answer is 5.")]),
        )

    before = scorer._batcher.batches_run
    first, second = asyncio.run(both())
    assert scorer._batcher.batches_run == before + 1
    assert first[1] == pytest.approx(reference_scores(scorer, PROMPT, TEXTS[1]), abs=1e-5)
    assert second[0] == pytest.approx(
        reference_scores(scorer, other, "7 - 2 = 5\nThe answer is 5."), abs=1e-5
    )


def test_aggregations_per_request(scorers):
    scorer = scorers["bon"]
    steps = step_scores(scorer, [TEXTS[2]])[0]
    assert len(steps) == 5
    expected = {
        "min": min(steps),
        "prod": math.prod(steps),
        "last": steps[-1],
        "mean": sum(steps) / len(steps),
    }
    for how, value in expected.items():
        assert score(scorer, [TEXTS[2]], how) == [pytest.approx(value, abs=1e-6)]
    assert len(set(expected.values())) == 4
    assert score(scorer, [TEXTS[2]]) == [pytest.approx(expected["min"], abs=1e-6)]  # default
    with pytest.raises(ValueError, match="valid aggregations: min, prod, last, mean"):
        score(scorer, [TEXTS[2]], "max")
    with pytest.raises(ValueError, match="unknown prm_aggregation 'max'"):
        check_aggregation("max")


@pytest.mark.parametrize("name", FORMATS)
def test_nothing_to_score_scores_zero(scorers, name):
    scorer = scorers[name]
    scores = score(scorer, ["", " \n\n ", TEXTS[0]], "last")
    assert scores[:2] == [0.0, 0.0]
    assert scores[2] == pytest.approx(reference_scores(scorer, PROMPT, TEXTS[0])[-1], abs=1e-5)
    assert step_scores(scorer, [""]) == [[]]


@pytest.mark.parametrize("name", ["bon", "qwen", "math_shepherd"])
def test_a_step_holding_the_tag_scores_zero_alone(scorers, name):
    scorer = scorers[name]
    bad = f"3 * 4 = 12 {scorer.fmt.tag}\nThe answer is 14."
    scores = score(scorer, [bad, TEXTS[1]], "mean")
    assert scores[0] == 0.0
    assert scores[1] == pytest.approx(sum(reference_scores(scorer, PROMPT, TEXTS[1])) / 2, abs=1e-5)


# --- truncation ------------------------------------------------------------------------


@pytest.mark.parametrize("name", FORMATS)
def test_a_long_prompt_keeps_the_last_tokens(scorers, name):
    scorer = scorers[name]
    long = Prompt(messages=(Message("user", "Think about 1 + 1. " * 60 + "What is 2 + 3 * 4?"),))
    ids, _ = encode_steps(scorer.fmt, scorer.tokenizer, long, split_steps(TEXTS[0]))
    assert len(ids) > 1000 > 512
    got = step_scores(scorer, [TEXTS[0], TEXTS[1]], prompt=long)
    assert [len(g) for g in got] == [3, 2]
    assert got[0] == pytest.approx(reference_scores(scorer, long, TEXTS[0]), abs=1e-5)


def test_truncation_drops_the_steps_it_cuts(scorers):
    scorer = scorers["bon"]
    long_step = "1 + " * 130 + "1 = 131"  # pushes the first step's tag out of the window
    text = f"3 * 4 = 12\n{long_step}\nThe answer is 14."
    ids, positions = encode_steps(scorer.fmt, scorer.tokenizer, PROMPT, split_steps(text))
    assert len(ids) > 512 and positions[0] < len(ids) - 512 <= positions[1]
    (got,) = step_scores(scorer, [text])
    assert len(got) == 2
    assert got == pytest.approx(reference_scores(scorer, PROMPT, text), abs=1e-5)
    # score_steps takes the encoding directly, alongside an untruncated one
    short = encode_steps(scorer.fmt, scorer.tokenizer, PROMPT, split_steps(TEXTS[1]))
    direct = scorer.score_steps([(ids, positions), short])
    assert direct[0] == pytest.approx(got, abs=1e-5)
    assert direct[1] == pytest.approx(reference_scores(scorer, PROMPT, TEXTS[1]), abs=1e-5)
    assert scorer.score_steps([]) == [] and scorer.score_steps([(ids, [0])]) == [[]]
