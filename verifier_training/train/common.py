"""What ``train-orm`` and ``train-prm`` share: their flags, the train/validation split, batches
of examples, and the saved run.

Both read records of sampled candidates (one per candidate, or one per labelled step list),
hold out a seeded fraction of the problems, train on the rest on the ``trainer`` rails
(``transformers.Trainer``) and save a Hugging Face directory with its tokenizer and
``training_config.json``.
"""

from __future__ import annotations

import argparse
import math
import os
import random
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any, TypeVar

import torch

from verifier_training.data.records import write_json
from verifier_training.train import trainer as rails

DEFAULT_POLICY = "bon_server/embedded/arith-policy"
R = TypeVar("R")
S = TypeVar("S")
T = TypeVar("T")


def add_base_args(p: argparse.ArgumentParser, head: str) -> None:
    """``--base`` (alias ``--init``) and ``--tokenizer``."""
    p.add_argument("--base", "--init", dest="init", default=DEFAULT_POLICY, metavar="MODEL",
                   help=f"the starting weights: any Hugging Face causal LM (a local directory or a "
                        f"hub id; default: the embedded arith policy) gets a new {head} on its "
                        f"backbone, or a checkpoint that already has that head is trained further "
                        f"(--init is the older name)")


def add_training_args(p: argparse.ArgumentParser, batch_help: str) -> None:
    """The optimisation, library and machine flags train-orm and train-prm share."""
    p.add_argument("--epochs", type=float, default=1.0, help="passes over the data (if --steps 0)")
    p.add_argument("--steps", type=int, default=0, help="optimizer steps (0: from --epochs)")
    p.add_argument("--batch-size", type=int, default=64, help=batch_help)
    p.add_argument("--warmup-frac", type=float, default=0.05, help="warmup steps as a fraction")
    rails.add_optimizer_args(p, lr=1e-3)
    p.add_argument("--bucket", type=int, default=8,
                   help="sort this many batches' worth of examples by length, then batch")
    p.add_argument("--threads", type=int, default=2,
                   help="torch CPU threads (a plain CPU run only: not on a GPU, not under "
                        "accelerate launch)")
    p.add_argument("--time-budget-min", type=float, default=0.0,
                   help="stop early once training has run this many minutes (0: no limit); the "
                        "lr schedule stays the one for --steps, and the stop is recorded")
    p.add_argument("--eval-batch-size", type=int, default=128, help="batch size for validation")
    p.add_argument("--no-progress", action="store_true", help="disable the progress bar")
    rails.add_library_args(p)


def rails_arguments(args: argparse.Namespace, n_train: int) -> rails.RailsArguments:
    """The Trainer's arguments of ``add_training_args``' flags: --steps (or --epochs over
    ``n_train`` examples, counting every process's batches), a warmup of --warmup-frac of them,
    the optimizer and library flags, --time-budget-min."""
    if args.steps > 0:
        steps = args.steps
    else:
        per_step = args.batch_size * args.grad_accum * int(os.environ.get("WORLD_SIZE", "1"))
        steps = max(1, math.ceil(args.epochs * n_train / per_step))
    warmup = max(1, round(args.warmup_frac * steps))
    return rails.rails_arguments(args, args.out, steps, warmup,
                                 time_budget_s=60 * args.time_budget_min)


def run(trainer_cls: Callable[..., rails.RailsTrainer], args: argparse.Namespace, model: Any,
        tokenizer: Any, n_train: int, draw: Callable[[], list[Any]],
        collator: Callable[[list[Any]], dict[str, Any]]) -> tuple[Any, rails.Progress]:
    """Train ``model`` on batches from ``draw`` (``collator`` makes each a dict of tensors);
    returns the trainer and its progress."""
    targs = rails_arguments(args, n_train)
    count = targs.max_steps * targs.gradient_accumulation_steps * targs.world_size
    trainer = rails.build(trainer_cls, model=model, args=targs,
                          train_dataset=rails.Batches(draw, count), data_collator=collator,
                          processing_class=tokenizer)
    progress = rails.Progress(trainer)
    rails.train(trainer, args, args.out)
    return trainer, progress


def split_problems(problem_ids: Sequence[str], val_frac: float, seed: int) -> set[str]:
    """A seeded set of held-out problem ids (at least one when val_frac > 0)."""
    unique = sorted(set(problem_ids))
    if val_frac <= 0 or len(unique) < 2:
        return set()
    n = max(1, round(len(unique) * val_frac))
    return set(random.Random(seed).sample(unique, n))


def split_records(records: Sequence[R], args: argparse.Namespace, rng: random.Random,
                  distinct: Callable[[R], Hashable]) -> tuple[list[R], list[R], list[R]]:
    """(records, train, validation): the records after ``--max-records`` (a seeded subset),
    split by problem (``--val-frac``); the training side deduplicated by ``distinct`` (unless
    ``--keep-duplicates``) and cut to mixed problems with ``--mixed-only``. The validation
    side stays as sampled."""
    records = list(records)
    if args.max_records is not None and args.max_records < len(records):
        records = rng.sample(records, args.max_records)
    val_ids = split_problems([r.problem_id for r in records], args.val_frac, args.seed)
    train = [r for r in records if r.problem_id not in val_ids]
    if not args.keep_duplicates:
        train = list({distinct(r): r for r in train}.values())
    if args.mixed_only:
        outcomes: dict[str, set[bool]] = {}
        for r in train:
            outcomes.setdefault(r.problem_id, set()).add(r.correct)
        train = [r for r in train if len(outcomes[r.problem_id]) == 2]
    return records, train, [r for r in records if r.problem_id in val_ids]


def batched_by_length(items: Sequence[T], length: Callable[[T], int], batch_size: int,
                      score: Callable[[list[T]], Sequence[S]]) -> list[S]:
    """``score`` over batches of items of about the same length (little padding), the results
    put back in the items' order."""
    order = sorted(range(len(items)), key=lambda i: length(items[i]))
    out: list[Any] = [None] * len(items)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        for i, value in zip(idx, score([items[i] for i in idx]), strict=True):
            out[i] = value
    return out


def pad(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    """Right-pad token id rows into one (rows x longest) tensor."""
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


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


def begin(args: argparse.Namespace) -> tuple[random.Random, Any]:
    """Start a run: torch on ``--threads`` (CPU only), torch's generator seeded with ``--seed``
    (a new head's init draws from it), the data order's own generator from the same seed, and
    the tokenizer of ``--tokenizer`` (default: ``--base``'s)."""
    rails.set_threads(args.threads)
    torch.manual_seed(args.seed)
    return random.Random(args.seed), load_tokenizer(getattr(args, "tokenizer", None) or args.init)


def load_tokenizer(path: str) -> Any:
    """A tokenizer directory's tokenizer, with a pad token (its eos) if it has none."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def finish(args: argparse.Namespace, command: str, trainer: Any, progress: rails.Progress,
           model: Any, tokenizer: Any, *, val: dict[str, Any], data: dict[str, Any],
           resolved: dict[str, Any], described: dict[str, Any]) -> None:
    """Report the run and save it to ``--out`` (``save_run``, on the main process), its record
    holding the flags, what was resolved from them, the model (``described`` adds to its class
    and size), the data, the training and the validation metrics. ``model`` is the trained
    model (LoRA merged in: ``trainer.trained_model``)."""
    if not trainer.is_world_process_zero():
        return
    print(progress.summary(trainer.args.max_steps))
    print("val: " + "  ".join(f"{k} {v}" for k, v in val.items()))
    model.eval()
    save_run(args.out, model, tokenizer, {
        "command": f"python -m verifier_training {command}",
        "flags": vars(args),
        "resolved": {"steps": trainer.args.max_steps, "steps_done": progress.done,
                     "warmup_steps": int(trainer.args.warmup_steps),
                     **rails.library_record(args, trainer), **resolved},
        "model": {"class": type(model).__name__,
                  "parameters": sum(p.numel() for p in model.parameters()),
                  "init": args.init, **described},
        "data": data,
        "result": {"final_smoothed_loss": None if progress.smooth is None
                   else round(progress.smooth, 5),
                   "train_seconds": round(progress.seconds, 1), "val": val,
                   "torch": torch.__version__},
    })
    print(f"saved to {args.out}")


def save_run(out: str, model: Any, tokenizer: Any, record: dict[str, Any]) -> None:
    """The HF directory: weights, tokenizer (chat template inside), training_config.json."""
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    try:
        tokenizer.save_pretrained(out, save_jinja_files=False)
    except TypeError:  # a tokenizer class without that option
        tokenizer.save_pretrained(out)
    write_json(os.path.join(out, "training_config.json"), record)
