"""ORMScorer on tiny random Llama classifiers: score range, padding invariance, formatting."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
import transformers
from tiny_models import save_tiny

from bon_server.scorers.orm import ORMScorer, format_for_orm
from bon_server.types import Candidate, Message, Prompt
from verifier_training.train.tokenizer import build_tokenizer

TEXTS = [
    "<|bos|><|user|>What is 2 + 3?<|end|><|assistant|>= 5\nThe answer is 5.<|end|>",
    "2 + 3 = 6",
    "x",
    "A much longer text than the others, so that every other one in the batch gets padded "
    "by a good number of pad tokens on its right.",
]


def build(path: Path, num_labels: int, seed: int = 0) -> Path:
    return save_tiny(
        transformers.LlamaForSequenceClassification,
        path,
        build_tokenizer(),
        seed,
        num_labels=num_labels,
    )


@pytest.fixture(scope="module", params=[1, 2], ids=["sigmoid", "softmax"])
def scorer(request, tmp_path_factory) -> ORMScorer:
    path = build(tmp_path_factory.mktemp("orm") / f"labels{request.param}", request.param)
    s = ORMScorer.from_pretrained(str(path), device="cpu", batch_size=64)  # auto: float32
    assert s.model.config.num_labels == request.param
    return s


def test_loads_on_cpu_in_float32(scorer):
    assert scorer.device.type == "cpu"
    assert next(scorer.model.parameters()).dtype == torch.float32
    assert scorer.kind == "orm"
    assert not scorer.model.training


def test_scores_are_probabilities(scorer):
    scores = scorer.score_texts(TEXTS)
    assert len(scores) == len(TEXTS)
    assert all(isinstance(s, float) for s in scores)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert len(set(scores)) > 1  # different texts, different scores: the model is really read


def test_padding_does_not_change_scores(scorer):
    alone = [scorer.score_texts([t])[0] for t in TEXTS]
    batched = scorer.score_texts(TEXTS)
    reversed_batch = scorer.score_texts(TEXTS[::-1])[::-1]
    assert batched == pytest.approx(alone, abs=1e-5)
    assert reversed_batch == pytest.approx(alone, abs=1e-5)


def test_matches_the_model_read_by_hand(scorer):
    text = TEXTS[0]
    ids = scorer.tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        logits = scorer.model(**ids).logits[0].float()
    expected = torch.sigmoid(logits[0]) if logits.numel() == 1 else torch.softmax(logits, -1)[1]
    assert scorer.score_texts([text])[0] == pytest.approx(expected.item(), abs=1e-6)


def test_small_batch_size_gives_the_same_scores(tmp_path):
    path = build(tmp_path / "orm", 1)
    big = ORMScorer.from_pretrained(str(path), device="cpu", dtype="float32", batch_size=64)
    small = ORMScorer.from_pretrained(str(path), device="cpu", dtype="float32", batch_size=1)
    assert small.score_texts(TEXTS) == pytest.approx(big.score_texts(TEXTS), abs=1e-5)


def test_async_score_formats_and_scores(scorer):
    prompt = Prompt(messages=(Message("user", "What is 2 + 3?"),))
    candidates = [
        Candidate(text=t, token_ids=(), cumulative_logprob=None, finish_reason="stop")
        for t in ("= 5\nThe answer is 5.", "= 6\nThe answer is 6.")
    ]
    scores = asyncio.run(scorer.score(prompt, candidates))
    texts = [format_for_orm(scorer.tokenizer, prompt, c.text) for c in candidates]
    assert scores == pytest.approx(scorer.score_texts(texts), abs=1e-5)
    assert scores[0] == pytest.approx(scorer.score_texts([TEXTS[0]])[0], abs=1e-5)


def test_concurrent_requests_get_their_own_scores(scorer):
    prompts = [Prompt(text=f"{k} + {k} = ") for k in range(4)]
    candidates = [
        Candidate(text=str(2 * k), token_ids=(), cumulative_logprob=None, finish_reason="stop")
        for k in range(4)
    ]

    async def main():
        return await asyncio.gather(
            *(scorer.score(p, [c]) for p, c in zip(prompts, candidates, strict=True))
        )

    together = asyncio.run(main())
    alone = [scorer.score_texts([f"{k} + {k} = {2 * k}"]) for k in range(4)]
    for got, want in zip(together, alone, strict=True):
        assert got == pytest.approx(want, abs=1e-5)


# ------------------------------------------------------------------ format_for_orm


def test_format_for_orm_uses_the_chat_template():
    tok = build_tokenizer()
    prompt = Prompt(messages=(Message("system", "Be exact."), Message("user", "What is 2 + 3?")))
    text = format_for_orm(tok, prompt, "= 5\nThe answer is 5.")
    assert text == (
        "<|bos|><|system|>Be exact.<|end|><|user|>What is 2 + 3?<|end|>"
        "<|assistant|>= 5\nThe answer is 5.<|end|>"
    )


def test_format_for_orm_without_a_chat_template_joins_lines():
    tok = build_tokenizer()
    tok.chat_template = None
    prompt = Prompt(messages=(Message("user", "Q?"),))
    assert format_for_orm(tok, prompt, "A.") == "Q?\nA."


def test_format_for_orm_concatenates_text_prompts():
    tok = build_tokenizer()
    assert format_for_orm(tok, Prompt(text="2 + 3 ="), " 5") == "2 + 3 = 5"


# ------------------------------------------------------------------ heads


def test_three_label_head_is_rejected(tmp_path):
    path = build(tmp_path / "orm3", 3)
    with pytest.raises(ValueError, match="1 or 2 labels"):
        ORMScorer.from_pretrained(str(path), device="cpu", dtype="float32")


def test_cuda_without_cuda_is_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    path = build(tmp_path / "orm", 1)
    with pytest.raises(ValueError, match="CUDA"):
        ORMScorer.from_pretrained(str(path), device="cuda")


# ------------------------------------------------ candidates that share their prompt

PROMPTS = [
    "<|bos|><|user|>Find a path from 12 to 57. Edges: 12>3, 3>57, 12>8, 8>41.<|end|><|assistant|>",
    "<|bos|><|user|>Find a path from 40 to 9. Edges: 40>2, 2>9, 40>77, 77>5.<|end|><|assistant|>",
]
COMPLETIONS = ["12>3\n3>57\nThe answer is 12>3>57.", "12>8\nThe answer is 12>8>41.", "x", ""]


def test_one_requests_candidates_are_grouped_on_their_prompt():
    from bon_server.scorers.orm import share_prefixes

    prompt = list(range(100, 140))  # 40 tokens
    ids = [prompt + [1, 2, 3], [7] * 30, prompt + [1, 2], prompt + [9], prompt[:20] + [5] * 30]
    def grouped(ids):
        return sorted((sorted(g), shared) for g, shared in share_prefixes(ids))

    # the three candidates of one prompt together, sharing the prompt (not the "1" only two
    # have); the rest alone: a short common head is not worth a group
    assert grouped(ids) == [([0, 2, 3], 40), ([1], 0), ([4], 0)]
    same = [prompt + [1]] * 3  # identical texts: each keeps its last token
    assert grouped(same) == [([0, 1, 2], 40)]
    assert grouped([prompt[:10] + [1], prompt[:10] + [2]]) == [([0], 0), ([1], 0)]


def test_scores_of_grouped_candidates_are_the_scores_of_each_alone(scorer):
    texts = [p + c for p in PROMPTS for c in COMPLETIONS] + TEXTS
    alone = [scorer.score_texts([t])[0] for t in texts]
    together = scorer.score_texts(texts)
    assert together == pytest.approx(alone, abs=1e-5)
    ids = scorer.tokenizer(texts, add_special_tokens=False)["input_ids"]
    from bon_server.scorers.orm import share_prefixes

    assert sum(1 for _, shared in share_prefixes(ids) if shared) == 2  # one group a prompt


def test_sharing_is_a_server_setting(tmp_path):
    from bon_server.config import Settings
    from bon_server.scorers import build_scorer

    path = str(build(tmp_path / "orm", 1))
    assert build_scorer(Settings(verifier=path)).share_prefix is True
    full = build_scorer(Settings(verifier=path, verifier_share_prefix=False))
    assert full.share_prefix is False
    texts = [PROMPTS[0] + c for c in COMPLETIONS]
    shared = build_scorer(Settings(verifier=path))
    assert full.score_texts(texts) == pytest.approx(shared.score_texts(texts), abs=1e-5)
