"""How learnable is checking one step here? A token classifier on isolated ``a op b = c`` lines.

    python -m verifier_training.research probe-steps --train runs/arith/train_samples.jsonl \\
        --eval runs/arith/eval_samples.jsonl --ops +- --arch policy --minutes 5

Every arithmetic line of the training records is one example, ``<bos>a op b = c<|step|>`` in the
policy's tokenizer, labelled by the task's exact checker (``tasks.arith.step_arithmetic_ok``);
a 2-class head reads the tag, as the PRM's does. The held-out lines (every arithmetic line of
``--eval``, weighted by how often the policy wrote it) are scored every ``--eval-every-min``:
ROC AUC per operator, on all held-out lines and on the ones never seen verbatim in training.

This isolates the hard part of a PRM in the arithmetic world, checking one operation, from
everything else a PRM does (context, step position, labels after the first error). If this
probe cannot separate right from wrong lines within the training budget, a PRM trained on whole
solutions in the same budget will not either. ``--arch``: ``policy`` (the policy's weights, a
new head: what ``train-prm`` starts from), ``llama`` (the policy's architecture from scratch,
``--layers`` deep), ``bert`` (a bidirectional encoder from scratch, where every digit can see
where its number ends).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from bon_server.scorers.steps import split_steps
from bon_server.tasks.arith import OPS, parse_step, step_arithmetic_ok
from verifier_training.cli import command_parser
from verifier_training.data.records import read_samples, write_json
from verifier_training.evaluate.metrics import roc_auc
from verifier_training.research import RESEARCH
from verifier_training.train import trainer as rails
from verifier_training.train.common import DEFAULT_POLICY, begin, pad
from verifier_training.train.prm import FMT, add_step_token

Line = tuple[str, bool, str]  # (line, arithmetically right, operator)


def arithmetic_lines(records: Sequence[Any], ops: str) -> list[Line]:
    """Every ``a op b = c`` line (op in ``ops``) of every record, with its exact label."""
    out = []
    for r in records:
        for step in split_steps(r.completion):
            ok = step_arithmetic_ok(step, ops=ops)
            if ok is not None:
                out.append((step, ok, parse_step(step)[1]))  # type: ignore[index]
    return out


def build_model(arch: str, init: str, layers: int | None, vocab: int, pad_id: int) -> Any:
    from transformers import (
        AutoConfig,
        AutoModelForTokenClassification,
        BertConfig,
        BertForTokenClassification,
    )

    if arch == "policy":
        model = AutoModelForTokenClassification.from_pretrained(init, num_labels=2,
                                                                dtype=torch.float32)
        model.resize_token_embeddings(vocab)
        return model
    base = AutoConfig.from_pretrained(init)
    if arch == "llama":
        base.num_hidden_layers = layers or base.num_hidden_layers
        base.vocab_size, base.num_labels, base.pad_token_id = vocab, 2, pad_id
        return AutoModelForTokenClassification.from_config(base)
    return BertForTokenClassification(BertConfig(
        vocab_size=vocab, hidden_size=base.hidden_size, intermediate_size=base.intermediate_size,
        num_attention_heads=base.num_attention_heads,
        num_hidden_layers=layers or base.num_hidden_layers,
        max_position_embeddings=base.max_position_embeddings, pad_token_id=pad_id, num_labels=2,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))


class ProbeTrainer(rails.RailsTrainer):
    """Cross-entropy of the 2-class head at each line's tag (its last token)."""

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        mask = inputs["attention_mask"]
        logits = model(input_ids=inputs["input_ids"], attention_mask=mask).logits
        tag = logits[torch.arange(len(mask), device=mask.device), mask.sum(1) - 1]
        loss = F.cross_entropy(tag, inputs["labels"])
        return (loss, tag) if return_outputs else loss


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = command_parser("probe-steps", __doc__, entry=RESEARCH)
    p.add_argument("--train", nargs="+", required=True, help="SampleRecord JSONL file(s)")
    p.add_argument("--eval", required=True, help="held-out SampleRecord JSONL")
    p.add_argument("--ops", default="".join(OPS), help="operators whose lines are used (+-*)")
    p.add_argument("--arch", choices=["policy", "llama", "bert"], default="policy")
    p.add_argument("--init", default=DEFAULT_POLICY, help="the policy (weights, config, tokenizer)")
    p.add_argument("--layers", type=int, default=None, help="depth for llama/bert (default: the "
                                                            "policy's)")
    p.add_argument("--minutes", type=float, default=5.0, help="training time budget")
    p.add_argument("--max-steps", type=int, default=0,
                   help="also stop after this many steps (0: only the time budget)")
    p.add_argument("--eval-every-min", type=float, default=2.5, help="minutes between scorings")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (constant)")
    p.add_argument("--batch-size", type=int, default=256, help="lines per step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rng, tokenizer = begin(args)
    add_step_token(tokenizer)
    tag = tokenizer.convert_tokens_to_ids(FMT.tag)

    train = [x for path in args.train for x in arithmetic_lines(read_samples(path), args.ops)]
    held_out = Counter(arithmetic_lines(read_samples(args.eval), args.ops))
    if not train or not held_out:
        raise SystemExit("no arithmetic lines with those operators in --train or --eval")
    seen = {line for line, _, _ in train}
    unseen_share = sum(n for (line, _, _), n in held_out.items() if line not in seen) / sum(
        held_out.values())
    print(f"train lines {len(train)} (wrong {sum(not ok for _, ok, _ in train) / len(train):.3f}, "
          f"distinct {len(seen)}); held-out lines {sum(held_out.values())} (distinct "
          f"{len(held_out)}, never seen in training {unseen_share:.3f})")

    model = build_model(args.arch, args.init, args.layers, len(tokenizer), tokenizer.pad_token_id)
    n_params = sum(p.numel() for p in model.parameters())
    cache: dict[str, list[int]] = {}

    def encode(line: str) -> list[int]:
        if line not in cache:
            cache[line] = [tokenizer.bos_token_id,
                           *tokenizer(line, add_special_tokens=False)["input_ids"], tag]
        return cache[line]

    def tag_logits(lines: Sequence[str]) -> torch.Tensor:
        ids = pad([encode(s) for s in lines], tokenizer.pad_token_id)
        mask = (ids != tokenizer.pad_token_id).long()
        logits = model(input_ids=ids, attention_mask=mask).logits
        return logits[torch.arange(len(lines)), mask.sum(1) - 1]

    def score_held_out() -> dict[str, float | None]:
        model.eval()
        distinct = list(held_out)
        margin: dict[Line, float] = {}
        with torch.no_grad():
            for start in range(0, len(distinct), 1024):
                chunk = distinct[start : start + 1024]
                lg = tag_logits([s for s, _, _ in chunk])
                margin.update(zip(chunk, (lg[:, 1] - lg[:, 0]).tolist(), strict=True))
        model.train()
        result = {}
        for name, keep in [*((op, lambda x, op=op: x[2] == op) for op in args.ops),
                           ("all", lambda x: True), ("unseen", lambda x: x[0] not in seen)]:
            xs = [(margin[x], x[1]) for x, n in held_out.items() if keep(x) for _ in range(n)]
            auc = roc_auc([m for m, _ in xs], [ok for _, ok in xs])
            result[name] = None if auc is None else round(auc, 4)
        return result

    print(f"{args.arch}: {n_params} parameters; held-out ROC AUC (right vs wrong lines):")
    columns = [*args.ops, "all", "unseen"]
    print(f"{'min':>5} {'steps':>6} {'loss':>7}  " + "  ".join(f"{c:>6}" for c in columns))
    history = []

    def report() -> None:
        aucs = score_held_out()
        minutes, smooth = progress.elapsed / 60, progress.smooth
        history.append({"minutes": round(minutes, 2), "steps": progress.done,
                        "loss": None if smooth is None else round(smooth, 4), "auc": aucs})
        print(f"{minutes:5.1f} {progress.done:6d} {smooth or float('nan'):7.4f}  "
              + "  ".join(f"{aucs[c] if aucs[c] is not None else float('nan'):6.3f}"
                          for c in columns), flush=True)

    class EveryMinutes(rails.TrainerCallback):
        next = args.eval_every_min

        def on_step_begin(self, *a: Any, **kw: Any) -> None:
            if progress.elapsed / 60 >= self.next:
                report()
                self.next += args.eval_every_min

    def collate(lines: list[Line]) -> dict[str, torch.Tensor]:
        ids = pad([encode(s) for s, _, _ in lines], tokenizer.pad_token_id)
        return {"input_ids": ids, "attention_mask": (ids != tokenizer.pad_token_id).long(),
                "labels": torch.tensor([int(ok) for _, ok, _ in lines])}

    # AdamW at a constant learning rate, no clipping; the budget or --max-steps ends it
    steps = args.max_steps or 10**9
    scratch = tempfile.mkdtemp(prefix="probe-steps-")
    targs = rails.rails_arguments(
        argparse.Namespace(**{**vars(args), "weight_decay": 0.01, "beta2": 0.95,
                              "no_progress": True}),
        scratch, steps, 0, grad_clip=0.0, min_lr_ratio=1.0, time_budget_s=60 * args.minutes,
        log_every=0, smoothing=0.03)
    trainer = rails.build(
        ProbeTrainer, model=model, args=targs, data_collator=collate,
        train_dataset=rails.Batches(
            lambda: [train[rng.randrange(len(train))] for _ in range(args.batch_size)], steps))
    progress = rails.Progress(trainer)
    trainer.add_callback(EveryMinutes())
    try:
        rails.train(trainer, argparse.Namespace(no_progress=True), scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report()
    if args.out:
        write_json(args.out, {"flags": vars(args), "parameters": n_params,
                              "train_lines": len(train), "held_out_lines": sum(held_out.values()),
                              "held_out_unseen_share": round(unseen_share, 4),
                              "history": history})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
