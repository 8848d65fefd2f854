"""Train a process reward model (PRM): P(this step is still on a path to the answer).

    python -m verifier_training train-prm --labels runs/arith/train_labels.jsonl \\
        --out runs/arith/prm

Any ``AutoModelForTokenClassification`` with two labels works (label 1 = good step, the one
``PRMScorer`` reads). By default the PRM starts from the policy's weights
(``LlamaForTokenClassification``: the policy's backbone, a new two-class head) and the
policy's tokenizer plus the special token ``<|step|>`` (embeddings resized). Each example is
``encode_steps(STEP_FORMATS["bon"], tokenizer, prompt, steps)``, the function the server's
scorer uses: the steps, each followed by ``<|step|>``, in the chat template; labels sit at
the returned tag positions only (-100 elsewhere).

Identical step lists of a problem are trained on once (``--keep-duplicates`` to keep them).
Labels come from the k-of-M counts of ``label-steps``: hard by default (good iff k > 0,
cross-entropy), or soft (``--soft-labels``: cross-entropy against [1 - k/M, k/M]).

It trains on ``transformers.Trainer`` (``PRMTrainer``: that cross-entropy at the tags; the
rails, ``accelerate launch``, ``--grad-accum``, checkpoints, ``--bf16`` and ``--lora`` are
``trainer``'s; with ``--lora`` the ``<|step|>`` embedding is trained in full).

A seeded fraction of problems is held out (``--val-frac``): step accuracy, ProcessBench
first-error F1 and Best-of-K accuracy are reported on it, read by the server's own
``PRMScorer``. The output directory is a Hugging Face model with its tokenizer and
``training_config.json``; it loads with ``PRMScorer.from_pretrained(dir)`` (the bon format
is detected from ``<|step|>``) and with vLLM's pooling runner.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Sequence
from typing import Any

import torch

from bon_server.scorers.base import aggregate
from bon_server.scorers.steps import STEP_FORMATS, encode_steps
from verifier_training.cli import command_parser
from verifier_training.data.records import StepLabelRecord, first_error, read_labels
from verifier_training.evaluate.metrics import first_error_f1
from verifier_training.train import common
from verifier_training.train import trainer as rails

FMT = STEP_FORMATS["bon"]
IGNORE = -100


def add_step_token(tokenizer: Any) -> bool:
    """Add ``<|step|>`` as a special token unless the tokenizer has it; True if added."""
    if FMT.tag in tokenizer.get_vocab():
        return False
    tokenizer.add_tokens([FMT.tag], special_tokens=True)
    return True


def targets(record: StepLabelRecord, soft: bool) -> list[float]:
    """Per-step probability that the step is good: hard 0/1 or soft k/M."""
    if soft:
        return record.soft_labels()
    return [float(g) for g in record.hard_labels()]


def step_probs(model: Any, tokenizer: Any, encoded: Sequence[tuple[list[int], list[int]]],
               batch_size: int) -> list[list[float]]:
    """Per-step P(good), read by the server's own ``PRMScorer``."""
    from bon_server.scorers.prm import PRMScorer

    scorer = PRMScorer(model, tokenizer, FMT, batch_size=batch_size)
    result = common.batched_by_length(encoded, lambda e: len(e[0]), batch_size,
                                      scorer.score_steps)
    model.train()
    return result


def collate(examples: Sequence[tuple[list[int], list[int], list[float]]],
            pad_id: int) -> dict[str, Any]:
    """(token ids, tag positions, per-step targets) examples -> a right-padded batch with the
    (row, column) of every tag and its target."""
    ids = common.pad([e[0] for e in examples], pad_id)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(examples):
        mask[i, : len(e[0])] = 1
    return {"input_ids": ids, "attention_mask": mask,
            "rows": torch.tensor([b for b, e in enumerate(examples) for _ in e[1]]),
            "cols": torch.tensor([p for e in examples for p in e[1]]),
            "targets": torch.tensor([t for e in examples for t in e[2]])}


class PRMTrainer(rails.RailsTrainer):
    """Cross-entropy of the 2-class head at the tags against [1 - p, p] (p: the step's
    target; with hard 0/1 targets the usual cross-entropy)."""

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        logits = model(input_ids=inputs["input_ids"],
                       attention_mask=inputs["attention_mask"]).logits
        logp = torch.log_softmax(logits[inputs["rows"], inputs["cols"]].float(), dim=-1)
        target = inputs["targets"]
        loss = -(target * logp[:, 1] + (1 - target) * logp[:, 0]).mean()
        return (loss, logits) if return_outputs else loss


def prm_metrics(records: Sequence[StepLabelRecord], scores: Sequence[Sequence[float]],
                threshold: float = 0.5) -> dict[str, Any]:
    if not records:
        return {}
    pairs = [(p >= threshold, g) for r, s in zip(records, scores, strict=True)
             for p, g in zip(s, r.hard_labels(), strict=True)]
    f1 = first_error_f1([r.first_error() for r in records],
                        [first_error([p >= threshold for p in s]) for s in scores])
    groups: dict[str, list[tuple[float, bool]]] = {}
    for r, s in zip(records, scores, strict=True):
        groups.setdefault(r.problem_id, []).append((aggregate(s, "min"), r.correct))
    best = [max(g, key=lambda sc: sc[0])[1] for g in groups.values()]
    return {
        "step_accuracy": round(sum(p == g for p, g in pairs) / len(pairs), 4),
        "bad_step_rate": round(sum(not g for _, g in pairs) / len(pairs), 4),
        **{k: round(v, 4) for k, v in f1.items()},
        "best_of_labelled_accuracy_min": round(sum(best) / len(best), 4),
        "records": len(records),
        "problems": len(groups),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = command_parser("train-prm", __doc__)
    p.add_argument("--labels", required=True, help="JSONL of StepLabelRecords to train on")
    p.add_argument("--out", required=True, help="output model directory (files overwritten)")
    common.add_base_args(p, "2-class token-classification head "
                            "(AutoModelForTokenClassification, num_labels=2)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer directory (default: --base); <|step|> is added if missing")
    p.add_argument("--soft-labels", action="store_true",
                   help="train on k/M (soft) instead of the default hard labels (k > 0)")
    p.add_argument("--seed", type=int, default=0, help="seed for head init, data order, split")
    p.add_argument("--val-frac", type=float, default=0.05,
                   help="fraction of problems held out for validation metrics")
    p.add_argument("--max-records", type=int, default=None,
                   help="train on at most this many label records (seeded subset; default all)")
    p.add_argument("--mixed-only", action="store_true",
                   help="train only on problems whose labelled candidates include both correct "
                        "and incorrect ones (what Best-of-N has to tell apart)")
    p.add_argument("--keep-duplicates", action="store_true",
                   help="train on every label record (default: once per distinct step list of "
                        "a problem)")
    common.add_training_args(p, batch_help="examples (solutions) per step")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rng, tokenizer = common.begin(args)
    added = add_step_token(tokenizer)  # the policy's tokenizer, plus <|step|>
    from transformers import AutoModelForTokenClassification

    # --- data: the server's step layout, labels only at the tags ------------------------------
    records, train, val = common.split_records(read_labels(args.labels), args, rng,
                                        lambda r: (r.problem_id, r.steps))

    def encode(rs: Sequence[StepLabelRecord]) -> list[tuple[list[int], list[int]]]:
        out = []
        for r in rs:
            ids, positions = encode_steps(FMT, tokenizer, r.prompt, r.steps)
            assert len(positions) == len(r.steps) > 0  # encode_steps raises otherwise
            out.append((ids, positions))
        return out

    train_enc, val_enc = encode(train), encode(val)
    train_targets = [targets(r, args.soft_labels) for r in train]
    n_steps = sum(len(t) for t in train_targets)
    stats = {
        "records": len(records), "train": len(train), "val": len(val),
        "train_problems": len({r.problem_id for r in train}),
        "val_problems": len({r.problem_id for r in val}), "train_steps": n_steps,
        "train_good_step_rate": round(sum(sum(t) for t in train_targets) / max(1, n_steps), 4),
        "train_correct_rate": round(sum(r.correct for r in train) / max(1, len(train)), 4),
        "inferred_steps": sum(sum(r.inferred) for r in train),
        "mean_tokens": round(sum(len(e[0]) for e in train_enc) / max(1, len(train_enc)), 1),
        "rollouts_per_step": records[0].rollouts if records else None,
        "policy": records[0].policy if records else None,
    }
    print("data: " + "  ".join(f"{k} {v}" for k, v in stats.items()))

    # --- model: the policy's backbone with a new 2-class token head ----------------------------
    model = AutoModelForTokenClassification.from_pretrained(args.init, num_labels=2,
                                                            dtype=torch.float32)
    if added or model.get_input_embeddings().num_embeddings != len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.config.id2label = {0: "bad", 1: "good"}
    model.config.label2id = {"bad": 0, "good": 1}
    pad_id = model.config.pad_token_id
    model = rails.with_lora(model, args, "TOKEN_CLS",
                            [tokenizer.convert_tokens_to_ids(FMT.tag)] if added else None)

    # --- optimisation -------------------------------------------------------------------------
    batches = common.length_batches([len(e[0]) for e in train_enc], args.batch_size,
                                    args.bucket, rng)
    examples = [(ids, positions, t) for (ids, positions), t in
                zip(train_enc, train_targets, strict=True)]
    trainer, progress = common.run(PRMTrainer, args, model, tokenizer, len(train),
                                   lambda: [examples[i] for i in next(batches)],
                                   functools.partial(collate, pad_id=pad_id))

    # --- validation and save -----------------------------------------------------------------
    model = rails.trained_model(trainer)
    common.finish(args, "train-prm", trainer, progress, model, tokenizer,
           val=prm_metrics(val, step_probs(model, tokenizer, val_enc, args.eval_batch_size)),
           data=stats, resolved={"step_format": FMT.name,
                                 "step_token_added": added,
                                 "labels": "soft" if args.soft_labels else "hard"},
           described={"num_labels": 2,
                      "read_as": "softmax(logits at <|step|>)[1] = P(good step)"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
