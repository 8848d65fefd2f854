"""The paths checker built into a transformer: it agrees with the task's checker."""

from __future__ import annotations

import random

import pytest
import torch

from bon_server.scorers.orm import ORMScorer, format_for_orm
from bon_server.tasks import get_task
from bon_server.types import Message, Prompt
from verifier_training.research import built_checker
from verifier_training.train.tokenizer import build_tokenizer

PATHS = get_task("paths")


@pytest.fixture(scope="module")
def checker():
    torch.manual_seed(0)
    tokenizer = build_tokenizer(numbers=True)
    return built_checker.build(tokenizer).eval(), tokenizer


def variants(problem, rng: random.Random) -> list[str]:
    """A right solution and the ways a policy's answer goes wrong (each kind at least once)."""
    ref = PATHS.reference(problem)
    steps, answer = ref.rsplit("\n", 1)
    nodes = problem.path
    out = [ref]
    out += [PATHS.corrupt(problem, ref, random.Random(rng.random())) for _ in range(4)]
    out += [
        steps,  # no answer line
        steps + answer,  # the answer line not on a line of its own
        steps + "\n" + answer + "\n",  # a trailing newline: still right
        f"{steps}\nThe answer is {'>'.join(map(str, nodes[:-1]))}.",  # stops short
        f"{steps}\nThe answer is {'>'.join(map(str, nodes[1:]))}.",  # skips the start
        f"{steps}\nThe answer is {nodes[0]}>{nodes[-1]}.",  # jumps to the target
        f"{steps}\nThe answer is {'>'.join(map(str, nodes + [nodes[1]]))}.",  # goes on
        f"{steps}\nThe answer is {'>'.join(map(str, nodes))}",  # no full stop
        "The answer is",
        "",
    ]
    return [c for c in out if c is not None]


def test_built_checker_agrees_with_the_task_checker(checker):
    model, tokenizer = checker
    rng = random.Random(7)
    texts, labels = [], []
    for problem in PATHS.problems(60, seed=99):
        for completion in variants(problem, rng):
            messages = [{"role": "user", "content": problem.question},
                        {"role": "assistant", "content": completion}]
            texts.append(tokenizer.apply_chat_template(messages, tokenize=False))
            labels.append(PATHS.check(problem, completion))
    assert 0.05 < sum(labels) / len(labels) < 0.5  # both kinds, many of each
    enc = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits[:, 0]
    wrong = [(t, y, round(z, 2)) for t, y, z in zip(texts, labels, logits.tolist(), strict=True)
             if (z > 0) != y]
    assert not wrong, wrong[:3]
    # Confident both ways, not near the boundary.
    assert logits[torch.tensor(labels)].min() > 3
    assert logits[~torch.tensor(labels)].max() < -3


def test_built_checker_serves_as_an_orm_from_the_prompt_alone(tmp_path):
    """Saved by the command, it loads through the server's ORM scorer (its default device and
    dtype), and from the prompt alone (no reference) puts the right path above near misses."""
    out = tmp_path / "checker"
    assert built_checker.main(["--out", str(out)]) == 0
    scorer = ORMScorer.from_pretrained(str(out))
    problem = PATHS.problems(1, seed=5)[0]
    ref = PATHS.reference(problem)
    rng = random.Random(1)
    wrongs = [w for w in (PATHS.corrupt(problem, ref, rng) for _ in range(6)) if w]
    prompt = Prompt(messages=(Message(role="user", content=problem.question),))
    texts = [format_for_orm(scorer.tokenizer, prompt, c) for c in [ref, *wrongs]]
    scores = scorer.score_texts(texts)
    assert scores[0] > 0.99
    assert max(scores[1:]) < 0.01


def test_random_decision_keeps_the_lookups_and_randomises_the_rest(checker):
    """``--random-decision``: layers 0 and 1 as built, the gather layer and head left to train."""
    model, tokenizer = checker
    other = built_checker.build(tokenizer, decision=False)
    built, random_ = dict(model.named_parameters()), dict(other.named_parameters())
    for name, w in built.items():
        learned = name.startswith("model.layers.2.self_attn") or name == "score.weight"
        assert torch.equal(w, random_[name]) != learned, name
