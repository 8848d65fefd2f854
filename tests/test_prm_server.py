"""A PRM served in-process through HTTP: ``bon-server serve --verifier-kind prm``.

The real CLI, the embedded policy on vLLM, and a tiny random-weight PRM (a two-class
``LlamaForTokenClassification`` whose tokenizer has the ``<|step|>`` tag) in transformers.
Each candidate's score must be what an independent forward pass of the same PRM gives:
the text laid out by the project's step formatter (``bon_server/scorers/steps.py``), the
probability of label 1 read at every ``<|step|>``, aggregated by the command line's
``--prm-aggregation`` unless the request names its own.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from conftest import PRM_AGGREGATION as COMMAND_LINE_AGGREGATION
from conftest import chat

from bon_server.scorers.steps import STEP_FORMATS, format_steps, split_steps
from bon_server.types import Message, Prompt

pytestmark = pytest.mark.engine

QUESTION = "What is 38 - 7 * 4 + 12?"

# written out here, not imported: what bon_server/scorers/base.py promises
AGGREGATE = {
    "min": min,
    "prod": math.prod,
    "last": lambda xs: xs[-1],
    "mean": lambda xs: sum(xs) / len(xs),
}


@pytest.fixture(scope="module")
def client(prm_server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{prm_server.base_url}/v1", api_key="unused", max_retries=0
    ) as c:
        yield c


def independent_step_scores(path: Path, question: str, texts: list[str]) -> list[list[float]]:
    """The PRM's step probabilities, one text at a time, without the server's scorer."""
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForTokenClassification.from_pretrained(path, dtype=torch.float32).eval()
    tag = tokenizer.convert_tokens_to_ids("<|step|>")
    prompt = Prompt(messages=(Message("user", question),))
    scores = []
    for text in texts:
        steps = split_steps(text)
        laid_out = format_steps(STEP_FORMATS["bon"], tokenizer, prompt, steps)
        ids = tokenizer.encode(laid_out, add_special_tokens=False)
        positions = [i for i, t in enumerate(ids) if t == tag]
        assert len(positions) == len(steps) >= 1, laid_out  # one tag per step: the format
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([ids])).logits[0]
        scores.append(torch.softmax(logits[positions].float(), dim=-1)[:, 1].tolist())
    return scores


def ask(client: openai.OpenAI, **extra):
    r = chat(
        client,
        QUESTION,
        seed=3,
        max_tokens=128,
        extra_body={"best_of": 6, "selector": "verifier", "return_candidates": True, **extra},
    )
    return r.bon


def test_prm_scores_are_an_independent_forward_pass_aggregated_as_asked(client, prm_path):
    default = ask(client)
    assert default["prm_aggregation"] == COMMAND_LINE_AGGREGATION
    texts = [c["text"] for c in default["candidates"]]
    steps = independent_step_scores(prm_path, QUESTION, texts)
    assert any(len(s) >= 2 for s in steps), texts  # else the aggregations cannot differ
    expected = {how: [fn(s) for s in steps] for how, fn in AGGREGATE.items()}
    # the four aggregations tell apart on these candidates, so a wrong one cannot pass
    assert len({tuple(round(x, 6) for x in v) for v in expected.values()}) == 4, expected

    assert default["verifier_scores"] == pytest.approx(expected[COMMAND_LINE_AGGREGATION], abs=1e-5)
    # each candidate carries the step scores its verifier score aggregates (the page tints them)
    for cand, independent in zip(default["candidates"], steps, strict=True):
        assert [s["text"] for s in cand["steps"]] == split_steps(cand["text"])
        assert [s["score"] for s in cand["steps"]] == pytest.approx(independent, abs=1e-5)
    for how in AGGREGATE:
        bon = ask(client, prm_aggregation=how)
        assert [c["text"] for c in bon["candidates"]] == texts  # same seed, same candidates
        assert bon["prm_aggregation"] == how
        assert bon["verifier_scores"] == pytest.approx(expected[how], abs=1e-5), how
        scores = bon["verifier_scores"]
        assert bon["chosen"][0] == max(range(len(texts)), key=lambda i: (scores[i], -i))


def test_an_unknown_aggregation_is_a_400(client):
    with pytest.raises(openai.BadRequestError) as info:
        ask(client, prm_aggregation="median")
    assert info.value.body["param"] == "prm_aggregation"
