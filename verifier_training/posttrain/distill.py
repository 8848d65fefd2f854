"""Distillation with cleaning: a teacher writes solutions, a student learns all or the kept ones.

    python -m verifier_training distill --teacher runs/rsft/checker/round-3 \\
        --teacher-best-of 16 --teacher-selector majority \\
        --student bon_server/embedded/countdown-policy --filters none,checker \\
        --out runs/distill/rsft3-bo16

The teacher is a policy, or the Best-of-N server's way of answering with it: for each of
``--problems`` fresh training problems it samples ``--teacher-best-of`` candidates and the
selector picks one (``majority``, or ``weighted_majority`` / ``verifier`` with ``--orm`` or
``--prm``), exactly as ``bon-server`` picks a response (N = 1: plain samples). Then, from the
same teacher solutions, one student per filter (TRL's ``SFTTrainer``, ``--steps`` each):

    none      every teacher solution (what distilling an unchecked teacher gives);
    checker   only those the ground truth accepts;
    verifier  only those the verifier scores at least ``--threshold``, and of those the best
              ``--top-fraction`` by that score (no ground truth).

Each student is measured on the held-out problems (pass@1, pass@K, majority@K). Output under
``--out``: ``teacher.jsonl`` (every teacher sample), ``solutions.jsonl`` (the picks),
``student-<filter>/`` (a servable model with ``training_config.json`` and
``train_rows.jsonl``, the chats it learnt), ``summary.json``.

With ``--dataset`` the problems are the file's training part (its held-out part is only
measured on), and the student's chats ask each question as the teacher was asked it, after
the dataset's ``--system-prompt``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from bon_server.selectors import SelectorInput, majority, verifier, weighted_majority
from bon_server.tasks.args import add_task_args, task_from_args
from bon_server.tasks.base import EVAL_SEED
from verifier_training.cli import command_parser
from verifier_training.data.records import (
    group_by_problem,
    read_samples,
    task_system_prompt,
    write_json,
    write_jsonl,
)
from verifier_training.evaluate.curves import add_verifier_args, verifier_scores
from verifier_training.posttrain.rounds import (
    add_round_args,
    held_out_leaks,
    policy_metrics,
    sample_round,
    train_sft,
)

FILTERS = ("none", "checker", "verifier")
SELECTORS = {"majority": majority, "weighted_majority": weighted_majority, "verifier": verifier}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = command_parser("distill", __doc__)
    p.add_argument("--teacher", required=True, help="the teacher policy directory")
    p.add_argument("--teacher-best-of", type=int, default=1,
                   help="candidates per problem the teacher's selector picks from (1: none)")
    p.add_argument("--teacher-selector", default="majority", choices=list(SELECTORS),
                   help="how the teacher answers from its candidates (as the server would)")
    p.add_argument("--student", required=True, help="the student's starting policy directory")
    add_task_args(p)
    p.add_argument("--filters", default="none,checker",
                   help=f"comma-separated, one student each, from {', '.join(FILTERS)}")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--problems", type=int, default=2000, help="training problems")
    p.add_argument("--problem-seed", type=int, default=7000, help="their problem stream")
    p.add_argument("--steps", type=int, default=150, help="training steps per student")
    p.add_argument("--batch-size", type=int, default=32, help="examples per step")
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate")
    add_verifier_args(p, "a verifier selector's or filter's")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="verifier filter: keep a solution whose score reaches this")
    p.add_argument("--top-fraction", type=float, default=1.0,
                   help="verifier filter: then keep only this share, the best scored")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    add_round_args(p, eval_help="held-out problems each student is measured on (0: not "
                                "measured)")
    args = p.parse_args(argv)
    args.filters = [f.strip() for f in args.filters.split(",") if f.strip()]
    unknown = [f for f in args.filters if f not in FILTERS]
    if unknown or not args.filters:
        p.error(f"--filters takes {', '.join(FILTERS)}; got {unknown or 'nothing'}")
    needs_verifier = "verifier" in args.filters or args.teacher_selector != "majority"
    if needs_verifier and bool(args.orm) == bool(args.prm):
        p.error("a verifier selector or filter needs exactly one of --orm and --prm")
    if args.orm and args.prm:
        p.error("give one verifier: --orm or --prm")
    if args.problem_seed == EVAL_SEED:
        p.error(f"--problem-seed {EVAL_SEED} is the held-out problems' stream")
    return args


def pick_solutions(records, selector: str, scores=None) -> list[Any]:  # type: ignore[no-untyped-def]
    """The record the selector answers with, per problem (truncated candidates never win)."""
    out = []
    for group in group_by_problem(records).values():
        usable = [r for r in group if r.finish_reason != "length"] or list(group)
        inp = SelectorInput(candidates=(), answers=[r.answer for r in usable],
                            verifier_scores=[scores[r.key] for r in usable] if scores else None)
        out.append(usable[SELECTORS[selector](inp).order[0]])
    return out


def verifier_kept(solutions, scores, threshold: float, top_fraction: float = 1.0):  # type: ignore[no-untyped-def]
    """The solutions the verifier filter keeps: scored at least ``threshold``, then the best
    ``top_fraction`` of all solutions by score (ties to the earlier one), in their order."""
    passing = [r for r in solutions if scores[r.key] >= threshold]
    room = int(round(top_fraction * len(solutions)))
    best = sorted(range(len(passing)), key=lambda i: -scores[passing[i].key])[:room]
    return [passing[i] for i in sorted(best)]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    task = task_from_args(args, args.teacher)
    os.makedirs(args.out, exist_ok=True)
    started = time.time()
    teacher_path = os.path.join(args.out, "teacher.jsonl")
    if not os.path.exists(teacher_path):
        records, _ = sample_round(args.teacher, task, train_problems=args.problems,
                                  train_seed=args.problem_seed, k=args.teacher_best_of,
                                  temperature=args.temperature, max_tokens=args.max_tokens,
                                  progress=not args.no_progress, dtype=args.dtype)
        write_jsonl(teacher_path, records)
    records = read_samples(teacher_path)
    leaks = held_out_leaks(records, task)
    if leaks:  # a teacher.jsonl left by a run with other flags (another --held-out)
        raise SystemExit(f"{teacher_path}: {len(leaks)} held-out questions of {task.name} among "
                         f"the teacher's samples, e.g. {leaks[0]!r}")
    scores = verifier_scores(args, records) if (args.orm or args.prm) else None
    solutions = pick_solutions(records, args.teacher_selector, scores)
    write_jsonl(os.path.join(args.out, "solutions.jsonl"), solutions)
    summary: dict[str, Any] = {
        "teacher": args.teacher, "teacher_best_of": args.teacher_best_of,
        "teacher_selector": args.teacher_selector, "student": args.student, "task": task.name,
        "solutions": len(solutions),
        "solutions_right": round(sum(r.correct for r in solutions) / max(1, len(solutions)), 4),
        "teacher_seconds": round(time.time() - started, 1), "students": {},
    }
    for name in args.filters:
        if name == "none":
            kept = solutions
        elif name == "checker":
            kept = [r for r in solutions if r.correct]
        else:
            kept = verifier_kept(solutions, scores, args.threshold, args.top_fraction)
        out = os.path.join(args.out, f"student-{name}")
        if not kept:
            print(f"filter {name}: no teacher solution kept, no student trained")
            summary["students"][name] = {"policy": None, "kept": 0}
            write_json(os.path.join(args.out, "summary.json"), summary)
            continue
        record = {"command": "python -m verifier_training distill", "flags": vars(args),
                  "filter": name, "data": {"task": task.name, "solutions": len(kept)}}
        trained = train_sft(args.student, [(r.question, r.completion.strip()) for r in kept],
                            out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                            seed=args.seed, threads=args.threads,
                            progress=not args.no_progress, record=record,
                            system_prompt=task_system_prompt(task))
        held = []
        if args.eval_problems:  # 0: train only (the student is measured elsewhere)
            _, held = sample_round(out, task, train_problems=0, train_seed=args.problem_seed,
                                   k=1, eval_problems=args.eval_problems, eval_k=args.eval_k,
                                   temperature=args.temperature, max_tokens=args.max_tokens,
                                   progress=not args.no_progress, dtype=args.dtype)
        summary["students"][name] = {
            "policy": out, "kept": len(kept),
            "kept_right": round(sum(r.correct for r in kept) / max(1, len(kept)), 4),
            "train_seconds": trained["train_seconds"], **policy_metrics(held)}
        write_json(os.path.join(args.out, "summary.json"), summary)
    k = args.eval_k
    print(f"teacher {args.teacher} (best of {args.teacher_best_of}, {args.teacher_selector}): "
          f"{summary['solutions']} solutions, {summary['solutions_right']:.1%} right")
    print(f"| student data | kept | kept right | pass@1 | pass@{k} | majority@{k} |")
    print("|---|---|---|---|---|---|")
    for name, s in summary["students"].items():
        if not s["kept"] or "pass@1" not in s:
            print(f"| {name} | {s['kept']} | | | | |")
            continue
        print(f"| {name} | {s['kept']} | {s['kept_right']:.3f} | {s['pass@1']:.3f} | "
              f"{s[f'pass@{k}']:.3f} | {s[f'majority@{k}']:.3f} |")
    print(json.dumps({"summary": os.path.join(args.out, "summary.json")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
