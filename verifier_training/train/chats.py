"""SFT examples: chats rendered with the policy's template, labelled on the answers, packed.

``make_example`` draws a problem (sometimes with a system message, sometimes after an earlier
turn) and renders it turn by turn, so the training text is exactly what the template gives
at inference; ``pack`` puts a batch's examples into rows with attention kept within each;
``answer_loss`` is the causal LM loss on labelled positions only; ``HeldOutLoss`` the same
on held-out problems, split into label tokens and the rest. ``sft`` trains on them.
"""

from __future__ import annotations

import argparse
import random

import torch
from transformers import LlamaForCausalLM

from bon_server.tasks.base import EVAL_SEED, Stream
from verifier_training.train.tokenizer import is_label_token

SYSTEM_PROMPTS: tuple[str, ...] = (
    "You are a helpful assistant.",
    "You are a careful math tutor. Solve the problem step by step.",
    "Answer the user's question accurately and concisely.",
    "You are a helpful assistant that is good at arithmetic.",
    "Think carefully and show your work.",
)
IGNORE = -100  # label for positions without loss



def add_chat_args(p: argparse.ArgumentParser) -> None:
    """The flags ``make_example``, ``pack`` and ``HeldOutLoss`` read."""
    p.add_argument("--system-frac", type=float, default=0.15,
                   help="fraction of examples with a system message")
    p.add_argument("--multiturn-frac", type=float, default=0.10,
                   help="fraction of examples with an earlier turn")
    p.add_argument("--prompt-loss", action="store_true",
                   help="train on the prompts' tokens too, not only the answers (tried for "
                        "paths, whose prompts repeat labels: it did not shorten the plateau "
                        "within 300 steps)")
    p.add_argument("--pack-len", type=int, default=256,
                   help="pack each batch's examples into rows of this many tokens (attention "
                        "stays within each example)")
    p.add_argument("--eval-every", type=int, default=0,
                   help="every N steps, print the loss on 64 held-out problems' answers, split "
                        "into label tokens (numbers, arrows: what lookups and copies produce) "
                        "and the rest (0: never)")


def make_example(
    stream: Stream, tokenizer, args: argparse.Namespace
) -> tuple[list[int], list[int]]:
    """One chat, as (input ids, labels); labels only on assistant answers (and their <|end|>)."""
    rng, task = stream.rng, stream.task
    messages = []
    if rng.random() < args.system_frac:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    if rng.random() < args.multiturn_frac:
        earlier = stream.next()
        messages.append({"role": "user", "content": earlier.question})
        messages.append({"role": "assistant", "content": task.reference(earlier)})
    problem = stream.next()
    messages.append({"role": "user", "content": problem.question})
    messages.append({"role": "assistant", "content": task.reference(problem)})

    # Render the chat turn by turn with the template, so the training text is exactly what the
    # template gives at inference; each assistant turn is the model's to predict.
    ids: list[int] = []
    labels: list[int] = []
    rendered = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(
            messages[:i], tokenize=False, add_generation_prompt=True
        )
        assert prompt.startswith(rendered)
        # the answer: the content and what the template closes a turn with (<|end|> here)
        turn = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        assert turn.startswith(prompt + message["content"])
        context = tokenizer.encode(prompt[len(rendered) :], add_special_tokens=False)
        answer = tokenizer.encode(turn[len(prompt) :], add_special_tokens=False)
        ids += context + answer
        labels += (context if args.prompt_loss else [IGNORE] * len(context)) + answer
        rendered = turn
    assert rendered == tokenizer.apply_chat_template(messages, tokenize=False)
    return ids, labels


def pack(examples: list[tuple[list[int], list[int]]], width: int, pad_id: int):
    """Pack examples into rows of `width` tokens (first fit, longest first).

    Position ids restart at 0 for every example; transformers reads the restarts as packed
    sequences and masks attention block-diagonally, so examples never see each other. The
    unused tail of a row is padding (its own block, no loss).
    """
    width = max(width, max(len(x) for x, _ in examples))
    rows: list[list[tuple[list[int], list[int]]]] = []
    room: list[int] = []
    for ex in sorted(examples, key=lambda ex: -len(ex[0])):
        for r, free in enumerate(room):
            if len(ex[0]) <= free:
                rows[r].append(ex)
                room[r] -= len(ex[0])
                break
        else:
            rows.append([ex])
            room.append(width - len(ex[0]))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for x, y in row:
            ids[r, at : at + len(x)] = torch.tensor(x)
            labels[r, at : at + len(y)] = torch.tensor(y)
            positions[r, at : at + len(x)] = torch.arange(len(x))
            at += len(x)
        positions[r, at:] = torch.arange(width - at)
    return ids, labels, positions


def answer_loss(model: LlamaForCausalLM, ids: torch.Tensor, labels: torch.Tensor,
                positions: torch.Tensor) -> torch.Tensor:
    """The causal LM loss (mean over labelled tokens), projecting onto the vocabulary only the
    positions that have a label: the same value as ``model(..., labels=labels).loss``, several
    times cheaper when the vocabulary is large and most tokens are prompt (the edges tokenizer:
    21,696 tokens; a full projection made a step 2.8 s instead of about 1 s)."""
    hidden = model.model(input_ids=ids, position_ids=positions, use_cache=False).last_hidden_state
    target = labels[:, 1:]
    keep = target != IGNORE
    logits = model.lm_head(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits.float(), target[keep])


class _Listed:
    """A ``Stream`` over a fixed list of problems (``make_example`` reads rng, task, next)."""

    def __init__(self, task, problems: list) -> None:
        self.task, self.rng, self._problems = task, random.Random(0), iter(problems)

    def next(self):
        return next(self._problems)


class HeldOutLoss:
    """Loss on the answers of the first ``count`` held-out problems (no system message, no
    earlier turn), split into label tokens (a number or ``N>``) and the rest: a policy that
    has learned the format but no lookup sits near ln 99 on labels while the rest is near 0."""

    def __init__(self, task, tokenizer, args: argparse.Namespace, count: int = 64) -> None:
        plain = argparse.Namespace(**{**vars(args), "system_frac": 0.0, "multiturn_frac": 0.0,
                                      "prompt_loss": False})
        stream = _Listed(task, task.problems(count, EVAL_SEED))
        examples = [make_example(stream, tokenizer, plain) for _ in range(count)]
        self.ids, self.labels, self.positions = pack(examples, args.pack_len,
                                                     tokenizer.pad_token_id)
        names = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        self.is_label = torch.tensor([is_label_token(t) for t in names])

    def __call__(self, model: LlamaForCausalLM) -> dict[str, float]:
        model.eval()
        device = next(model.parameters()).device
        with torch.no_grad():
            logits = model(input_ids=self.ids.to(device), position_ids=self.positions.to(device),
                           use_cache=False).logits[:, :-1].float().cpu()
        model.train()
        target = self.labels[:, 1:]
        keep = target != IGNORE
        loss = torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="none")
        label = self.is_label[target[keep]]
        # the first answer token: the first labelled position after an unlabelled one
        before = torch.nn.functional.pad(target[:, :-1], (1, 0), value=IGNORE)
        first = (before == IGNORE)[keep]
        return {"answer": loss.mean().item(), "labels": loss[label].mean().item(),
                "other": loss[~label].mean().item(), "first": loss[first].mean().item()}
