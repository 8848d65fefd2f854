"""Training sets for other trainers, all derived from the raw records.

    python -m verifier_training export --records runs/arith/train_samples.jsonl \\
        --labels runs/arith/train_labels.jsonl --out-dir runs/arith/export

Writes JSONL files in the forms TRL's trainers read:

    rsft.jsonl  rejection-sampling fine-tuning (SFTTrainer, conversational):
                {"messages": [user, assistant]} for each CORRECT completion, deduplicated
                per prompt.
    dpo.jsonl   preference pairs (DPOTrainer, conversational):
                {"prompt": [user], "chosen": [assistant], "rejected": [assistant]};
                chosen correct, rejected incorrect (so never a tie and never the same text),
                deduplicated, at most ``--max-pairs-per-prompt`` per prompt (seeded choice).
    orm.jsonl   unpaired preference (KTO/reward-model form, conversational):
                {"prompt": [user], "completion": [assistant], "label": bool}, deduplicated.
    prm.jsonl   stepwise supervision, the form of the Hub's PRM sets (trl-lib/math_shepherd):
                {"prompt": str, "completions": [step, ...], "labels": [bool, ...]} from the
                label records (hard labels: k > 0), deduplicated per prompt and steps. TRL's
                PRMTrainer read it; TRL 1.x has none, so ``train-prm`` trains from the label
                records themselves and this file is for other PRM trainers.

Texts are compared after stripping surrounding whitespace. ``--skip-truncated`` (default
on) leaves out completions that hit ``max_tokens``. This module owns only these derivations;
record shapes live in ``data.records``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from collections.abc import Iterable, Sequence
from typing import Any

from bon_server.tasks.args import add_task_args, task_from_args
from verifier_training.cli import command_parser
from verifier_training.data.records import (
    SampleRecord,
    StepLabelRecord,
    chat_messages,
    group_by_problem,
    read_labels,
    read_samples,
    task_system_prompt,
    write_json,
)


def _user(question: str, system: str = "") -> list[dict[str, str]]:
    return chat_messages(question, system)  # the prompt as sampling asked it


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def _unique_texts(records: Iterable[SampleRecord]) -> list[str]:
    seen: dict[str, None] = {}
    for r in records:
        seen.setdefault(r.completion.strip(), None)
    return list(seen)


def _usable(records: Iterable[SampleRecord], skip_truncated: bool) -> list[SampleRecord]:
    return [r for r in records if not (skip_truncated and r.finish_reason == "length")]


def rsft_examples(records: Sequence[SampleRecord], skip_truncated: bool = True,
                  system: str = "") -> list[dict]:
    out = []
    for rs in group_by_problem(_usable(records, skip_truncated)).values():
        for text in _unique_texts(r for r in rs if r.correct):
            out.append({"messages": _user(rs[0].question, system) + _assistant(text)})
    return out


def dpo_pairs(
    records: Sequence[SampleRecord],
    max_pairs_per_prompt: int = 4,
    seed: int = 0,
    skip_truncated: bool = True,
    system: str = "",
) -> list[dict]:
    """Correct x incorrect pairs of distinct texts per prompt, a seeded choice of at most
    ``max_pairs_per_prompt`` of them (0: all)."""
    rng = random.Random(seed)
    out = []
    for rs in group_by_problem(_usable(records, skip_truncated)).values():
        good = _unique_texts(r for r in rs if r.correct)
        good_set = set(good)
        bad = [t for t in _unique_texts(r for r in rs if not r.correct) if t not in good_set]
        pairs = [(g, b) for g in good for b in bad]
        if max_pairs_per_prompt and len(pairs) > max_pairs_per_prompt:
            pairs = rng.sample(pairs, max_pairs_per_prompt)
        prompt = _user(rs[0].question, system)
        out += [{"prompt": prompt, "chosen": _assistant(g), "rejected": _assistant(b)}
                for g, b in pairs]
    return out


def orm_examples(records: Sequence[SampleRecord], skip_truncated: bool = True,
                 system: str = "") -> list[dict]:
    out = []
    for rs in group_by_problem(_usable(records, skip_truncated)).values():
        labels: dict[str, bool] = {}
        for r in rs:
            labels.setdefault(r.completion.strip(), r.correct)
        out += [{"prompt": _user(rs[0].question, system), "completion": _assistant(t), "label": ok}
                for t, ok in labels.items()]
    return out


def prm_examples(labels: Sequence[StepLabelRecord]) -> list[dict]:
    seen: set[tuple[str, tuple[str, ...]]] = set()
    out = []
    for lab in labels:
        key = (lab.question, lab.steps)
        if key in seen:
            continue
        seen.add(key)
        out.append({"prompt": lab.question, "completions": list(lab.steps),
                    "labels": lab.hard_labels()})
    return out


def write_lines(path: str, rows: Iterable[dict[str, Any]]) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = command_parser("export", __doc__)
    p.add_argument("--records", required=True, help="SampleRecords JSONL (RSFT, DPO, ORM sets)")
    p.add_argument("--labels", default=None, help="StepLabelRecords JSONL (the PRM set)")
    p.add_argument("--out-dir", required=True, help="directory for the JSONL files")
    p.add_argument("--max-pairs-per-prompt", type=int, default=4,
                   help="most DPO pairs per prompt, chosen at random (0: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the DPO pair choice")
    p.add_argument("--keep-truncated", action="store_true",
                   help="also export completions that hit max_tokens (skipped by default)")
    add_task_args(p)  # a dataset's --system-prompt heads every exported chat
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    records = read_samples(args.records)
    system = task_system_prompt(task_from_args(args)) if args.dataset else ""
    skip = not args.keep_truncated
    os.makedirs(args.out_dir, exist_ok=True)
    out = args.out_dir
    counts = {
        "rsft": write_lines(os.path.join(out, "rsft.jsonl"), rsft_examples(records, skip, system)),
        "dpo": write_lines(os.path.join(out, "dpo.jsonl"),
                           dpo_pairs(records, args.max_pairs_per_prompt, args.seed, skip, system)),
        "orm": write_lines(os.path.join(out, "orm.jsonl"), orm_examples(records, skip, system)),
    }
    if args.labels:
        counts["prm"] = write_lines(os.path.join(args.out_dir, "prm.jsonl"),
                                    prm_examples(read_labels(args.labels)))
    write_json(os.path.join(args.out_dir, "export_stats.json"),
               {"flags": vars(args), "source_records": len(records), "rows": counts})
    print("  ".join(f"{k}.jsonl {v} rows" for k, v in counts.items()) + f" -> {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
