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

A seeded fraction of problems is held out (``--val-frac``): step accuracy, ProcessBench
first-error F1 and Best-of-K accuracy are reported on it, read by the server's own
``PRMScorer``. The output directory is a Hugging Face model with its tokenizer and
``training_config.json``; it loads with ``PRMScorer.from_pretrained(dir)`` (the bon format
is detected from ``<|step|>``) and with vLLM's pooling runner.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Sequence
from typing import Any

import torch
from tqdm import tqdm

from bon_server.scorers.base import aggregate
from bon_server.scorers.steps import STEP_FORMATS, encode_steps
from verifier_training.evaluate import first_error_f1
from verifier_training.records import StepLabelRecord, first_error, read_labels
from verifier_training.train_orm import (
    DEFAULT_POLICY,
    add_training_args,
    length_batches,
    load_tokenizer,
    lr_factor,
    pad,
    resolve_steps,
    save_run,
    split_problems,
)

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
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    result: list[list[float]] = [[] for _ in encoded]
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        for i, s in zip(idx, scorer.score_steps([encoded[i] for i in idx]), strict=True):
            result[i] = s
    model.train()
    return result


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
    p = argparse.ArgumentParser(
        prog="python -m verifier_training train-prm", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--labels", required=True, help="JSONL of StepLabelRecords to train on")
    p.add_argument("--out", required=True, help="output model directory (files overwritten)")
    p.add_argument("--init", default=DEFAULT_POLICY,
                   help="starting weights: the policy directory (default; a new 2-class token "
                        "head on its backbone) or any AutoModelForTokenClassification checkpoint")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer directory (default: --init); <|step|> is added if missing")
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
    add_training_args(p, batch_help="examples (solutions) per step")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    from transformers import AutoModelForTokenClassification

    # --- tokenizer: the policy's, plus <|step|> ---------------------------------------------
    tokenizer = load_tokenizer(args.tokenizer or args.init)
    added = add_step_token(tokenizer)

    # --- data: the server's step layout, labels only at the tags ------------------------------
    records = read_labels(args.labels)
    if args.max_records is not None and args.max_records < len(records):
        records = rng.sample(records, args.max_records)
    val_ids = split_problems([r.problem_id for r in records], args.val_frac, args.seed)
    train = [r for r in records if r.problem_id not in val_ids]
    if not args.keep_duplicates:
        train = list({(r.problem_id, r.steps): r for r in train}.values())
    if args.mixed_only:
        outcomes: dict[str, set[bool]] = {}
        for r in train:
            outcomes.setdefault(r.problem_id, set()).add(r.correct)
        train = [r for r in train if len(outcomes[r.problem_id]) == 2]
    val = [r for r in records if r.problem_id in val_ids]

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
        "train_problems": len({r.problem_id for r in train}), "val_problems": len(val_ids),
        "train_steps": n_steps,
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
    n_params = sum(p.numel() for p in model.parameters())

    # --- optimisation -------------------------------------------------------------------------
    steps = resolve_steps(args, len(train))
    warmup = max(1, round(args.warmup_frac * steps))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, args.beta2),
                                  weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, steps, warmup, args.min_lr_ratio))
    batches = length_batches([len(e[0]) for e in train_enc], args.batch_size, args.bucket, rng)
    model.train()
    start = time.time()
    smooth = None
    bar = tqdm(range(steps), desc="train-prm", disable=args.no_progress, mininterval=2.0)
    done_steps = 0
    for _ in bar:
        if args.time_budget_min and time.time() - start > 60 * args.time_budget_min:
            break
        done_steps += 1
        idx = next(batches)
        ids = pad([train_enc[i][0] for i in idx], pad_id)
        rows = [b for b, i in enumerate(idx) for _ in train_enc[i][1]]
        cols = [p for i in idx for p in train_enc[i][1]]
        target = torch.tensor([t for i in idx for t in train_targets[i]])
        logits = model(input_ids=ids, attention_mask=(ids != pad_id).long()).logits
        logp = torch.log_softmax(logits[rows, cols].float(), dim=-1)  # (tagged steps, 2)
        # cross-entropy against [1 - p, p]; with hard 0/1 targets it is the usual CE
        loss = -(target * logp[:, 1] + (1 - target) * logp[:, 0]).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        scheduler.step()
        smooth = loss.item() if smooth is None else 0.95 * smooth + 0.05 * loss.item()
        bar.set_postfix(loss=f"{smooth:.4f}", lr=f"{scheduler.get_last_lr()[0]:.1e}")
    train_seconds = time.time() - start

    # --- validation and save -----------------------------------------------------------------
    metrics = prm_metrics(val, step_probs(model, tokenizer, val_enc, args.eval_batch_size))
    bar.close()
    stopped = "" if done_steps == steps else f" (time budget: stopped after {done_steps})"
    print(f"trained {done_steps}/{steps} steps in {train_seconds:.0f} s{stopped}; "
          f"final smoothed loss {smooth:.4f}")
    print("val: " + "  ".join(f"{k} {v}" for k, v in metrics.items()))
    model.eval()
    save_run(args.out, model, tokenizer, {
        "command": "python -m verifier_training train-prm",
        "flags": vars(args),
        "resolved": {"steps": steps, "steps_done": done_steps, "warmup_steps": warmup,
                     "step_format": FMT.name, "step_token_added": added,
                     "labels": "soft" if args.soft_labels else "hard"},
        "model": {"class": type(model).__name__, "parameters": n_params, "init": args.init,
                  "num_labels": 2, "read_as": "softmax(logits at <|step|>)[1] = P(good step)"},
        "data": stats,
        "result": {"final_smoothed_loss": None if smooth is None else round(smooth, 5),
                   "train_seconds": round(train_seconds, 1), "val": metrics,
                   "torch": torch.__version__},
    })
    print(f"saved to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
