"""Train an outcome reward model (ORM): P(this completion's final answer is correct).

    python -m verifier_training train-orm --records runs/arith/train_samples.jsonl \\
        --out runs/arith/orm

Any ``AutoModelForSequenceClassification`` works. By default the ORM starts from the
policy's own weights (``LlamaForSequenceClassification`` with one label: the backbone is the
policy's, the score head is new) and uses the policy's tokenizer. Each example is
``format_for_orm(tokenizer, prompt, completion)``, the very function the server's
``ORMScorer`` applies, labelled with the record's ``correct``; the loss is binary
cross-entropy on the one logit (the scorer reads it through a sigmoid). AdamW, linear warmup
then cosine decay, seeded; examples are bucketed by length to waste little compute on
padding.

Identical completions of a problem are trained on once (``--keep-duplicates`` to keep
them). A seeded fraction of the *problems* is held out (``--val-frac``); on it the script reports
loss, accuracy, pairwise accuracy (a correct candidate scored above an incorrect one of the
same problem) and Best-of-K accuracy of the ORM's argmax.

The output directory is a Hugging Face model (``save_pretrained``) with its tokenizer and
``training_config.json``: every resolved flag, data statistics, final metrics and wall time.
This script owns the ORM's training loop; the text layout belongs to ``bon_server``.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from tqdm import tqdm

from bon_server.scorers.orm import format_for_orm
from verifier_training.evaluate import pairwise_accuracy
from verifier_training.records import SampleRecord, read_samples, write_json

DEFAULT_POLICY = "bon_server/embedded/arith-policy"


# ----------------------------------------------------------------- helpers shared with train_prm

def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def length_batches(
    lengths: Sequence[int], batch_size: int, bucket: int, rng: random.Random
) -> Iterator[list[int]]:
    """Endless batches of example indices: shuffled, each pool of ``bucket`` batches sorted
    by length and cut into batches, the batch order shuffled again."""
    while True:
        order = list(range(len(lengths)))
        rng.shuffle(order)
        pool_size = batch_size * bucket
        for start in range(0, len(order), pool_size):
            pool = sorted(order[start : start + pool_size], key=lambda i: lengths[i])
            chunks = [pool[i : i + batch_size] for i in range(0, len(pool), batch_size)]
            rng.shuffle(chunks)
            yield from chunks


def problem_batches(
    problems: Sequence[str], batch_size: int, rng: random.Random
) -> Iterator[list[int]]:
    """Endless batches of whole problems (all their examples together, about ``batch_size``
    examples a batch), problems shuffled each pass: pairs within a problem share a batch."""
    groups: dict[str, list[int]] = {}
    for i, pid in enumerate(problems):
        groups.setdefault(pid, []).append(i)
    while True:
        order = list(groups.values())
        rng.shuffle(order)
        batch: list[int] = []
        for idx in order:
            batch += idx
            if len(batch) >= batch_size:
                yield batch
                batch = []
        if batch:
            yield batch


def pairwise_loss(logits: torch.Tensor, y: torch.Tensor, groups: Sequence[str]) -> torch.Tensor:
    """Bradley-Terry: -log sigmoid(s_correct - s_incorrect) over same-problem pairs."""
    same = torch.tensor([[a == b for b in groups] for a in groups])
    pairs = same & (y[:, None] > 0.5) & (y[None, :] < 0.5)
    if not pairs.any():
        return logits.sum() * 0.0
    diff = logits[:, None] - logits[None, :]
    return -torch.nn.functional.logsigmoid(diff[pairs]).mean()


def pad(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def split_problems(problem_ids: Sequence[str], val_frac: float, seed: int) -> set[str]:
    """A seeded set of held-out problem ids (at least one when val_frac > 0)."""
    unique = sorted(set(problem_ids))
    if val_frac <= 0 or len(unique) < 2:
        return set()
    n = max(1, round(len(unique) * val_frac))
    return set(random.Random(seed).sample(unique, n))


def resolve_steps(args: argparse.Namespace, n_train: int) -> int:
    if args.steps > 0:
        return args.steps
    return max(1, math.ceil(args.epochs * n_train / args.batch_size))


def add_training_args(p: argparse.ArgumentParser, batch_help: str) -> None:
    """The optimisation and machine flags train-orm and train-prm share."""
    # optimisation
    p.add_argument("--epochs", type=float, default=1.0, help="passes over the data (if --steps 0)")
    p.add_argument("--steps", type=int, default=0, help="optimizer steps (0: from --epochs)")
    p.add_argument("--batch-size", type=int, default=64, help=batch_help)
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--warmup-frac", type=float, default=0.05, help="warmup steps as a fraction")
    p.add_argument("--min-lr-ratio", type=float, default=0.1, help="final lr / peak lr")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    p.add_argument("--beta2", type=float, default=0.95, help="AdamW beta2")
    p.add_argument("--grad-clip", type=float, default=1.0, help="gradient norm clip (0: none)")
    p.add_argument("--bucket", type=int, default=8,
                   help="sort this many batches' worth of examples by length, then batch")
    # machine
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--time-budget-min", type=float, default=0.0,
                   help="stop early once training has run this many minutes (0: no limit); the "
                        "lr schedule stays the one for --steps, and the stop is recorded")
    p.add_argument("--eval-batch-size", type=int, default=128, help="batch size for validation")
    p.add_argument("--no-progress", action="store_true", help="disable the progress bar")


def save_run(out: str, model: Any, tokenizer: Any, record: dict[str, Any]) -> None:
    """The HF directory: weights, tokenizer (chat template inside), training_config.json."""
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    try:
        tokenizer.save_pretrained(out, save_jinja_files=False)
    except TypeError:  # a tokenizer class without that option
        tokenizer.save_pretrained(out)
    write_json(os.path.join(out, "training_config.json"), record)


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


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


# ------------------------------------------------------------------------------- evaluation

def predict(model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int) -> list[float]:
    """P(correct) of each text, read by the server's own ``ORMScorer`` (sigmoid of the logit)."""
    from bon_server.scorers.orm import ORMScorer

    scorer = ORMScorer(model, tokenizer, batch_size=batch_size)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    probs = [0.0] * len(texts)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        for i, p in zip(idx, scorer.score_texts([texts[i] for i in idx]), strict=True):
            probs[i] = p
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
    p = argparse.ArgumentParser(
        prog="python -m verifier_training train-orm", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--records", required=True, help="JSONL of SampleRecords to train on")
    p.add_argument("--hard-negatives", type=float, default=0.0,
                   help="per correct training candidate, this many edited wrong copies on "
                        "average (the task's corrupt: a forged step, a swapped number); 0: none")
    p.add_argument("--out", required=True, help="output model directory (files overwritten)")
    p.add_argument("--init", default=DEFAULT_POLICY,
                   help="starting weights: the policy directory (default; a new 1-logit head on "
                        "its backbone) or any checkpoint AutoModelForSequenceClassification loads")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: --init)")
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
    add_training_args(p, batch_help="examples per step")
    p.add_argument("--pos-weight", type=float, default=1.0,
                   help="BCE weight of the positive (correct) class")
    p.add_argument("--pairwise-weight", type=float, default=0.0,
                   help="add this times a Bradley-Terry loss over (correct, incorrect) pairs of "
                        "the same problem; batches then hold whole problems (0: BCE only)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    from transformers import AutoModelForSequenceClassification

    # --- data: one text per candidate, laid out by the server's own formatter ---------------
    tokenizer = load_tokenizer(args.tokenizer or args.init)
    records = read_samples(args.records)
    if args.max_records is not None and args.max_records < len(records):
        records = rng.sample(records, args.max_records)
    val_ids = split_problems([r.problem_id for r in records], args.val_frac, args.seed)
    train = [r for r in records if r.problem_id not in val_ids]
    if not args.keep_duplicates:
        train = list({(r.problem_id, r.completion.strip()): r for r in train}.values())
    if args.mixed_only:
        outcomes: dict[str, set[bool]] = {}
        for r in train:
            outcomes.setdefault(r.problem_id, set()).add(r.correct)
        train = [r for r in train if len(outcomes[r.problem_id]) == 2]
    val = [r for r in records if r.problem_id in val_ids]  # as sampled: duplicates kept
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
        "train_problems": len({r.problem_id for r in train}), "val_problems": len(val_ids),
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
    n_params = sum(p.numel() for p in model.parameters())

    # --- optimisation -----------------------------------------------------------------------
    steps = resolve_steps(args, len(train))
    warmup = max(1, round(args.warmup_frac * steps))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, args.beta2),
                                  weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, steps, warmup, args.min_lr_ratio))
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(args.pos_weight))
    if args.pairwise_weight > 0:
        batches = problem_batches([r.problem_id for r in train], args.batch_size, rng)
    else:
        batches = length_batches([len(x) for x in train_ids], args.batch_size, args.bucket, rng)
    model.train()
    start = time.time()
    smooth = None
    bar = tqdm(range(steps), desc="train-orm", disable=args.no_progress, mininterval=2.0)
    done_steps = 0
    for _ in bar:
        if args.time_budget_min and time.time() - start > 60 * args.time_budget_min:
            break
        done_steps += 1
        idx = next(batches)
        ids = pad([train_ids[i] for i in idx], pad_id)
        logits = model(input_ids=ids, attention_mask=(ids != pad_id).long()).logits[:, 0]
        loss = loss_fn(logits.float(), train_y[idx])
        if args.pairwise_weight > 0:
            loss = loss + args.pairwise_weight * pairwise_loss(
                logits.float(), train_y[idx], [train[i].problem_id for i in idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        scheduler.step()
        smooth = loss.item() if smooth is None else 0.95 * smooth + 0.05 * loss.item()
        bar.set_postfix(loss=f"{smooth:.4f}", lr=f"{scheduler.get_last_lr()[0]:.1e}")
    train_seconds = time.time() - start

    # --- validation and save ---------------------------------------------------------------
    metrics = orm_metrics(val, predict(model, tokenizer, val_texts, args.eval_batch_size))
    bar.close()
    stopped = "" if done_steps == steps else f" (time budget: stopped after {done_steps})"
    print(f"trained {done_steps}/{steps} steps in {train_seconds:.0f} s{stopped}; "
          f"final smoothed loss {smooth:.4f}")
    print("val: " + "  ".join(f"{k} {v}" for k, v in metrics.items()))
    model.eval()
    save_run(args.out, model, tokenizer, {
        "command": "python -m verifier_training train-orm",
        "flags": vars(args),
        "resolved": {"steps": steps, "steps_done": done_steps, "warmup_steps": warmup},
        "model": {"class": type(model).__name__, "parameters": n_params,
                  "init": args.init, "num_labels": 1, "read_as": "sigmoid(logit) = P(correct)"},
        "data": stats,
        "result": {"final_smoothed_loss": None if smooth is None else round(smooth, 5),
                   "train_seconds": round(train_seconds, 1), "val": metrics,
                   "torch": torch.__version__},
    })
    print(f"saved to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
