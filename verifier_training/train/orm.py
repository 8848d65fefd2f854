"""Train an outcome reward model (ORM): P(this completion's final answer is correct).

    python -m verifier_training train-orm --records runs/arith/train_samples.jsonl \\
        --out runs/arith/orm

Any ``AutoModelForSequenceClassification`` works. By default the ORM starts from the
policy's own weights (``LlamaForSequenceClassification`` with one label: the backbone is the
policy's, the score head is new) and uses the policy's tokenizer. Each example is
``format_for_orm(tokenizer, prompt, completion)``, the very function the server's
``ORMScorer`` applies, labelled with the record's ``correct``; the loss is binary
cross-entropy on the one logit (the scorer reads it through a sigmoid), plus optionally a
Bradley-Terry loss over same-problem pairs. It trains on ``transformers.Trainer``
(``ORMTrainer``: the loss above; the rails are ``trainer``'s: AdamW, linear warmup then cosine
decay, seeded; gradient accumulation, checkpoints, bf16, LoRA, ``accelerate launch``);
examples are bucketed by length to waste little compute on padding::

    accelerate launch -m verifier_training train-orm --records R --base MODEL --out DIR --bf16

Identical completions of a problem are trained on once (``--keep-duplicates`` to keep
them). A seeded fraction of the *problems* is held out (``--val-frac``); on it the script reports
loss, accuracy, pairwise accuracy (a correct candidate scored above an incorrect one of the
same problem) and Best-of-K accuracy of the ORM's argmax.

The output directory is a Hugging Face model (``save_pretrained``) with its tokenizer and
``training_config.json``: every resolved flag, data statistics, final metrics and wall time.
This module owns the ORM's data and loss; the optimisation is ``trainer``'s, the text layout
belongs to ``bon_server``.
"""

from __future__ import annotations

import argparse
import functools
import math
import random
from collections.abc import Sequence
from typing import Any

import torch

from bon_server.scorers.orm import format_for_orm
from verifier_training.cli import command_parser
from verifier_training.data.records import SampleRecord, read_samples
from verifier_training.evaluate.metrics import pairwise_accuracy
from verifier_training.train import common
from verifier_training.train import trainer as rails


def pairwise_loss(logits: torch.Tensor, y: torch.Tensor,
                  groups: Sequence[str] | torch.Tensor) -> torch.Tensor:
    """Bradley-Terry: -log sigmoid(s_correct - s_incorrect) over same-problem pairs
    (``groups``: each example's problem, as names or as integer ids)."""
    if not isinstance(groups, torch.Tensor):
        names = {g: k for k, g in enumerate(dict.fromkeys(groups))}
        groups = torch.tensor([names[g] for g in groups], device=logits.device)
    same = groups[:, None] == groups[None, :]
    pairs = same & (y[:, None] > 0.5) & (y[None, :] < 0.5)
    if not pairs.any():
        return logits.sum() * 0.0
    diff = logits[:, None] - logits[None, :]
    return -torch.nn.functional.logsigmoid(diff[pairs]).mean()


def hard_negatives(records: Sequence[SampleRecord], rate: float,
                   rng: random.Random) -> list[SampleRecord]:
    """Near misses of the correct candidates, labelled wrong: ``rate`` per correct record on
    average (the task's ``corrupt``; worlds without one add none)."""
    from dataclasses import replace

    from bon_server.tasks import get_task

    out = []
    for r in records:
        task = get_task(r.task)
        if not r.correct or not hasattr(task, "corrupt"):
            continue
        copies = int(rate) + (rng.random() < rate - int(rate))
        for k in range(copies):
            text = task.corrupt(r.problem(), r.completion, rng)
            if text is not None:
                out.append(replace(r, completion=text, correct=False,
                                   answer=None, sample_index=-1 - k))
    return out


# ---------------------------------------------------------------------------------- training

def collate(examples: Sequence[tuple[list[int], float, int]], pad_id: int) -> dict[str, Any]:
    """(token ids, label, problem number) examples -> a right-padded batch."""
    ids = common.pad([e[0] for e in examples], pad_id)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(examples):
        mask[i, : len(e[0])] = 1
    return {"input_ids": ids, "attention_mask": mask,
            "labels": torch.tensor([e[1] for e in examples]),
            "groups": torch.tensor([e[2] for e in examples])}


class ORMTrainer(rails.RailsTrainer):
    """BCE on the one logit (``pos_weight``), plus ``pairwise_weight`` x ``pairwise_loss``."""

    def __init__(self, *a: Any, pos_weight: float = 1.0, pairwise_weight: float = 0.0,
                 **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.pos_weight, self.pairwise_weight = pos_weight, pairwise_weight

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        logits = model(input_ids=inputs["input_ids"],
                       attention_mask=inputs["attention_mask"]).logits[:, 0].float()
        y = inputs["labels"]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, y, pos_weight=torch.tensor(self.pos_weight, device=logits.device))
        if self.pairwise_weight > 0:
            loss = loss + self.pairwise_weight * pairwise_loss(logits, y, inputs["groups"])
        return (loss, logits) if return_outputs else loss


# ------------------------------------------------------------------------------- evaluation

def predict(model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int) -> list[float]:
    """P(correct) of each text, read by the server's own ``ORMScorer`` (sigmoid of the logit)."""
    from bon_server.scorers.orm import ORMScorer

    scorer = ORMScorer(model, tokenizer, batch_size=batch_size)
    probs = common.batched_by_length(texts, len, batch_size, scorer.score_texts)
    model.train()
    return probs


def orm_metrics(records: Sequence[SampleRecord], probs: Sequence[float]) -> dict[str, Any]:
    if not records:
        return {}
    groups: dict[str, list[tuple[float, bool]]] = {}
    for r, p in zip(records, probs, strict=True):
        groups.setdefault(r.problem_id, []).append((p, r.correct))
    eps = 1e-7
    bce = -sum(
        math.log(max(eps, p)) if r.correct else math.log(max(eps, 1 - p))
        for r, p in zip(records, probs, strict=True)
    ) / len(records)
    best = [max(g, key=lambda sc: sc[0])[1] for g in groups.values()]
    pairwise = pairwise_accuracy(list(groups.values()))
    return {
        "loss": round(bce, 4),
        "accuracy": round(sum((p >= 0.5) == r.correct for r, p in zip(records, probs, strict=True))
                          / len(records), 4),
        "pairwise_accuracy": None if pairwise is None else round(pairwise, 4),
        "best_of_k_accuracy": round(sum(best) / len(best), 4),
        "pass@1": round(sum(r.correct for r in records) / len(records), 4),
        "problems": len(groups),
    }


# ------------------------------------------------------------------------------------ main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = command_parser("train-orm", __doc__)
    p.add_argument("--records", required=True, help="JSONL of SampleRecords to train on")
    p.add_argument("--hard-negatives", type=float, default=0.0,
                   help="per correct training candidate, this many edited wrong copies on "
                        "average (the task's corrupt: a forged step, a swapped number); 0: none")
    p.add_argument("--out", required=True, help="output model directory (files overwritten)")
    common.add_base_args(p, "1-logit sequence-classification head "
                            "(AutoModelForSequenceClassification, num_labels=1)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: --base)")
    p.add_argument("--seed", type=int, default=0, help="seed for head init, data order, split")
    p.add_argument("--val-frac", type=float, default=0.05,
                   help="fraction of problems held out for validation metrics")
    p.add_argument("--max-records", type=int, default=None,
                   help="train on at most this many records (seeded subset; default all)")
    p.add_argument("--max-length", type=int, default=512, help="truncate texts to this many tokens")
    p.add_argument("--mixed-only", action="store_true",
                   help="train only on problems with both correct and incorrect candidates: "
                        "Best-of-N only ever compares candidates of one problem, and the other "
                        "problems teach mostly how hard a problem looks")
    p.add_argument("--keep-duplicates", action="store_true",
                   help="train on every record (default: one example per distinct completion of "
                        "a problem; its label is a function of the text, so copies add no "
                        "information, only cost)")
    common.add_training_args(p, batch_help="examples per step")
    p.add_argument("--pos-weight", type=float, default=1.0,
                   help="BCE weight of the positive (correct) class")
    p.add_argument("--pairwise-weight", type=float, default=0.0,
                   help="add this times a Bradley-Terry loss over (correct, incorrect) pairs of "
                        "the same problem; batches then hold whole problems (0: BCE only)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rng, tokenizer = common.begin(args)
    from transformers import AutoModelForSequenceClassification

    # --- data: one text per candidate, laid out by the server's own formatter ---------------
    records, train, val = common.split_records(read_samples(args.records), args, rng,
                                        lambda r: (r.problem_id, r.completion.strip()))
    negatives = hard_negatives(train, args.hard_negatives, rng) if args.hard_negatives else []
    train += negatives

    train_texts = [format_for_orm(tokenizer, r.prompt, r.completion) for r in train]
    val_texts = [format_for_orm(tokenizer, r.prompt, r.completion) for r in val]
    train_ids = tokenizer(train_texts, add_special_tokens=False, truncation=True,
                          max_length=args.max_length)["input_ids"]
    train_y = torch.tensor([float(r.correct) for r in train])
    stats = {
        "records": len(records), "train": len(train), "val": len(val),
        "hard_negatives": len(negatives),
        "train_problems": len({r.problem_id for r in train}),
        "val_problems": len({r.problem_id for r in val}),
        "train_positive_rate": round(float(train_y.mean()), 4) if len(train) else None,
        "mean_tokens": round(sum(map(len, train_ids)) / max(1, len(train_ids)), 1),
        "policy": records[0].policy if records else None,
    }
    print("data: " + "  ".join(f"{k} {v}" for k, v in stats.items()))

    # --- model: the policy's backbone with a new one-logit head -------------------------------
    model = AutoModelForSequenceClassification.from_pretrained(args.init, num_labels=1,
                                                               dtype=torch.float32)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    pad_id = model.config.pad_token_id

    model = rails.with_lora(model, args, "SEQ_CLS")

    # --- optimisation: batches of similar lengths, or of whole problems -----------------------
    if args.pairwise_weight > 0:
        batches = common.problem_batches([r.problem_id for r in train], args.batch_size, rng)
    else:
        batches = common.length_batches([len(x) for x in train_ids], args.batch_size,
                                        args.bucket, rng)
    number = {pid: k for k, pid in enumerate(dict.fromkeys(r.problem_id for r in train))}
    examples = [(x, float(r.correct), number[r.problem_id])
                for x, r in zip(train_ids, train, strict=True)]
    trainer, progress = common.run(
        functools.partial(ORMTrainer, pos_weight=args.pos_weight,
                          pairwise_weight=args.pairwise_weight),
        args, model, tokenizer, len(train), lambda: [examples[i] for i in next(batches)],
        functools.partial(collate, pad_id=pad_id))

    # --- validation and save ---------------------------------------------------------------
    model = rails.trained_model(trainer)
    common.finish(args, "train-orm", trainer, progress, model, tokenizer,
           val=orm_metrics(val, predict(model, tokenizer, val_texts, args.eval_batch_size)),
           data=stats, resolved={},
           described={"num_labels": 1, "read_as": "sigmoid(logit) = P(correct)"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
