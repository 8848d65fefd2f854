"""Rejection-sampling fine-tuning: sample, keep the best by a rule, fine-tune, repeat.

    python -m verifier_training rsft --policy bon_server/embedded/countdown-policy \\
        --rule checker --rounds 3 --out runs/rsft/checker

Each round (Llama 2's iterative rejection sampling; STaR with ``--rule checker``):

1. the current policy samples ``-k`` completions for each of ``--problems`` fresh training
   problems (round r draws problem stream ``--problem-seed + r``; held-out prompts are never
   drawn), through the engine the server uses;
2. a rule (``selection``) keeps examples: ``checker`` (ground truth), ``verifier`` (an ORM
   or PRM through the server's selector, no ground truth), ``random`` (the control: as many
   examples, no selection), ``reference`` (the control: as many reference solutions, i.e.
   more SFT);
3. TRL's ``SFTTrainer`` fine-tunes the current policy on them for ``--steps`` steps (the same
   for every rule, so the controls spend the same compute);
4. the new policy is measured on ``--eval-problems`` held-out problems x ``--eval-k`` (pass@1,
   pass@K, majority@K), in the same engine start as the next round's sampling (0: not
   measured, and no engine starts for it).

The task is a world (``--task``) or your dataset file (``--dataset`` and its flags): training
problems come from its training part only, and the training chats ask each question as
sampling did, after the dataset's ``--system-prompt``.

``python -m verifier_training dpo`` runs the same loop with TRL's ``DPOTrainer`` on pairs
(chosen by the rule, rejected wrong) instead of SFT on kept examples.

Output, under ``--out``: ``round-R/`` per round (a servable model directory with
``training_config.json``, ``samples.jsonl`` the round's training samples, ``kept.jsonl``
what the rule kept, ``train_rows.jsonl`` the chats trained on, ``round.json`` its figures),
``summary.json`` and a printed table. A round whose ``round.json`` exists is not redone, so an
interrupted run resumes. ``--reuse-from DIR`` takes round 1's samples and the starting
policy's held-out figures from another run on the same policy and task (every rule then
selects from the same samples); samples holding a held-out question are refused.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from typing import Any

from bon_server.tasks.args import add_task_args, task_from_args
from bon_server.tasks.base import EVAL_SEED
from verifier_training.cli import command_parser
from verifier_training.data.records import (
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
    train_dpo,
    train_sft,
)
from verifier_training.posttrain.selection import (
    RULES,
    VERIFIER_SELECTORS,
    Kept,
    preference_pairs,
    right_steps,
    select,
)

COUNTDOWN_POLICY = "bon_server/embedded/countdown-policy"


def parse_args(argv: list[str] | None, method: str = "sft") -> argparse.Namespace:
    command = "rsft" if method == "sft" else "dpo"
    p = command_parser(command, __doc__)
    p.add_argument("--policy", default=COUNTDOWN_POLICY, help="the starting policy directory")
    add_task_args(p)
    p.add_argument("--out", required=True, help="output directory (rounds resume from it)")
    p.add_argument("--rule", default="checker",
                   choices=RULES if method == "sft" else ("checker", "verifier"),
                   help="what is kept (see posttrain/selection.py)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of sample, keep, train")
    p.add_argument("--problems", type=int, default=2000, help="training problems per round")
    p.add_argument("-k", "--k", type=int, default=8, help="samples per training problem")
    p.add_argument("--per-problem", type=int, default=2 if method == "sft" else 4,
                   help="most examples (pairs for dpo) kept per problem")
    p.add_argument("--problem-seed", type=int, default=5000,
                   help="round r samples problem stream seed + r")
    p.add_argument("--steps", type=int, default=150, help="training steps per round")
    p.add_argument("--batch-size", type=int, default=32, help="examples (pairs) per step")
    p.add_argument("--lr", type=float, default=5e-4 if method == "sft" else 5e-5,
                   help="peak learning rate (cosine decay, short warmup)")
    if method == "dpo":
        p.add_argument("--beta", type=float, default=0.1, help="DPO's beta")
        p.add_argument("--sft-weight", type=float, default=0.0,
                       help="add the chosen completions' NLL with this weight (RPO; 0: DPO)")
    p.add_argument("--exact-steps", action="store_true",
                   help="checker rule: keep a right answer only when the task's exact step "
                        "checker accepts every step (no right answer through a forged step)")
    add_verifier_args(p, "the verifier rule's")
    p.add_argument("--selector", default="weighted_majority", choices=list(VERIFIER_SELECTORS),
                   help="verifier rule: how the verifier's scores pick (as the server would)")
    p.add_argument("--threshold", type=float, default=0.0,
                   help="verifier rule: keep a pick only when the selector's confidence (the "
                        "verifier score, or the answer's weighted vote share) reaches this")
    p.add_argument("--top-fraction", type=float, default=1.0,
                   help="verifier rule: keep only this fraction of problems, the most "
                        "confident picks")
    p.add_argument("--reuse-from", default=None,
                   help="another run's directory on the same policy: its round-1 samples and "
                        "starting figures are used instead of sampling them again")
    p.add_argument("--seed", type=int, default=0, help="seed of selection and training")
    add_round_args(p, eval_help="held-out problems each round's policy is measured on (0: "
                                "not measured)")
    args = p.parse_args(argv)
    if args.rule == "verifier" and bool(args.orm) == bool(args.prm):
        p.error("--rule verifier needs exactly one of --orm and --prm")
    if args.problem_seed < EVAL_SEED <= args.problem_seed + args.rounds:
        p.error(f"--problem-seed {args.problem_seed}: round {EVAL_SEED - args.problem_seed} "
                f"would train on stream {EVAL_SEED}, the held-out problems")
    args.method = method
    return args


def kept_figures(kept: list[Kept]) -> dict[str, Any]:
    """What a rule kept, judged afterwards by the checker (never used to keep)."""
    sampled = [k.record for k in kept if k.record is not None]
    out: dict[str, Any] = {"kept": len(kept)}
    if sampled:
        out["kept_right"] = round(sum(r.correct for r in sampled) / len(sampled), 4)
        out["right_with_a_wrong_step"] = sum(r.correct and not right_steps(r) for r in sampled)
    return out


def _rows(kept: list[Kept]) -> list[dict[str, Any]]:
    return [{"question": k.question, "completion": k.completion, "score": k.score,
             "problem_id": k.record.problem_id if k.record else None,
             "correct": k.record.correct if k.record else True} for k in kept]


def run_round(args: argparse.Namespace, r: int, policy: str, task, out: str,  # type: ignore[no-untyped-def]
              eval_before: bool) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Round r from ``policy`` into ``out``: (round figures, the policy's held-out figures)."""
    start = time.time()
    os.makedirs(out, exist_ok=True)
    samples_path = os.path.join(out, "samples.jsonl")
    before = None
    reused = r == 1 and args.reuse_from
    if reused:
        with open(os.path.join(args.reuse_from, "summary.json")) as f:
            theirs = json.load(f)
        if theirs["policy"] != args.policy:
            raise SystemExit(f"--reuse-from {args.reuse_from} started from {theirs['policy']}, "
                             f"not {args.policy}")
        if theirs.get("task", task.name) != task.name:
            raise SystemExit(f"--reuse-from {args.reuse_from} sampled {theirs['task']}, "
                             f"not {task.name}")
        try:  # the records do not hold the system prompt they were sampled after: its flags do
            with open(os.path.join(args.reuse_from, "round-1", "training_config.json")) as f:
                asked = json.load(f)["flags"].get("system_prompt")
        except (OSError, KeyError):
            asked = args.system_prompt
        if (asked or "") != (args.system_prompt or ""):
            raise SystemExit(f"--reuse-from {args.reuse_from} sampled after the system prompt "
                             f"{asked!r}, not {args.system_prompt!r}")
        shutil.copyfile(os.path.join(args.reuse_from, "round-1", "samples.jsonl"), samples_path)
        before = theirs["start"]
    if not os.path.exists(samples_path) or (eval_before and before is None):
        train, held = sample_round(
            policy, task, train_problems=0 if os.path.exists(samples_path) else args.problems,
            train_seed=args.problem_seed + r, k=args.k,
            eval_problems=args.eval_problems if eval_before else 0, eval_k=args.eval_k,
            temperature=args.temperature, max_tokens=args.max_tokens,
            progress=not args.no_progress, dtype=args.dtype)
        if train:
            write_jsonl(samples_path, train)
        if held:
            before = policy_metrics(held)
    records = read_samples(samples_path)
    leaks = held_out_leaks(records, task)
    if leaks:  # samples made with other flags (another --held-out, reused from another run)
        raise SystemExit(f"{samples_path}: {len(leaks)} held-out questions of {task.name} among "
                         f"the training samples, e.g. {leaks[0]!r}")
    sampled_s = time.time() - start

    scores = verifier_scores(args, records) if args.rule == "verifier" else None
    record = {"command": f"python -m verifier_training {'rsft' if args.method == 'sft' else 'dpo'}",
              "flags": {k: v for k, v in vars(args).items()}, "round": r,
              "data": {"task": task.name, "samples": len(records)}}
    if args.method == "sft":
        kept = select(records, args.rule, per_problem=args.per_problem, seed=args.seed + r,
                      scores=scores, selector=args.selector, threshold=args.threshold,
                      top_fraction=args.top_fraction, exact_steps=args.exact_steps)
        with open(os.path.join(out, "kept.jsonl"), "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in _rows(kept))
        figures = kept_figures(kept)
        trained = train_sft(policy, [(k.question, k.completion) for k in kept], out,
                            steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                            seed=args.seed + r, threads=args.threads,
                            progress=not args.no_progress, record=record,
                            system_prompt=task_system_prompt(task))
    else:
        pairs = preference_pairs(records, args.rule, pairs_per_problem=args.per_problem,
                                 seed=args.seed + r, scores=scores)
        with open(os.path.join(out, "pairs.jsonl"), "w") as f:
            f.writelines(json.dumps({"question": q, "chosen": c, "rejected": j}) + "\n"
                         for q, c, j in pairs)
        right = {(x.question, x.completion.strip()) for x in records if x.correct}
        figures = {"pairs": len(pairs),
                   "chosen_right": round(sum((q, c) in right for q, c, _ in pairs)
                                         / max(1, len(pairs)), 4),
                   "rejected_right": round(sum((q, j) in right for q, _, j in pairs)
                                           / max(1, len(pairs)), 4)}
        trained = train_dpo(policy, pairs, out, steps=args.steps, batch_size=args.batch_size,
                            lr=args.lr, beta=args.beta, sft_weight=args.sft_weight,
                            seed=args.seed + r,
                            threads=args.threads, progress=not args.no_progress, record=record,
                            system_prompt=task_system_prompt(task))
    result = {"round": r, "rule": args.rule, "method": args.method, "policy": out,
              "samples": len(records), "samples_right": round(
                  sum(x.correct for x in records) / max(1, len(records)), 4),
              "samples_reused": bool(reused), **figures,
              "train_seconds": trained["train_seconds"],
              "sample_seconds": round(sampled_s, 1)}
    return result, before


def evaluate_only(args: argparse.Namespace, policy: str, task) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    _, held = sample_round(policy, task, train_problems=0, train_seed=args.problem_seed, k=args.k,
                           eval_problems=args.eval_problems, eval_k=args.eval_k,
                           temperature=args.temperature, max_tokens=args.max_tokens,
                           progress=not args.no_progress, dtype=args.dtype)
    return policy_metrics(held)


def table(summary: dict[str, Any]) -> str:
    k = summary["eval_k"]
    head = (f"| round | policy | pass@1 | pass@{k} | majority@{k} | kept | kept right | "
            "minutes |")
    lines = [head, "|---" * 8 + "|"]

    def cells(m: dict[str, Any] | None) -> str:  # blank where not measured (--eval-problems 0)
        m = m or {}
        return " | ".join(f"{m[key]:.3f}" if key in m else "" for key in
                          ("pass@1", f"pass@{k}", f"majority@{k}"))

    lines.append(f"| 0 | {summary['policy']} | {cells(summary['start'])} | | | |")
    for row in summary["rounds"]:
        kept = row.get("kept", row.get("pairs", ""))
        right = row.get("kept_right", row.get("chosen_right", ""))
        minutes = row.get("round_seconds", 0) / 60
        lines.append(f"| {row['round']} | {row['policy']} | {cells(row.get('after'))}"
                     f" | {kept} | {right} | {minutes:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None, method: str = "sft") -> int:
    args = parse_args(argv, method)
    task = task_from_args(args, args.policy)
    os.makedirs(args.out, exist_ok=True)
    summary_path = os.path.join(args.out, "summary.json")
    summary: dict[str, Any] = {"policy": args.policy, "task": task.name, "rule": args.rule,
                               "method": method, "eval_k": args.eval_k, "start": None,
                               "rounds": []}
    if os.path.exists(summary_path):
        with open(summary_path) as f:
            summary = json.load(f)
    policy = args.policy
    for r in range(1, args.rounds + 1):
        out = os.path.join(args.out, f"round-{r}")
        done = os.path.join(out, "round.json")
        if os.path.exists(done):
            policy = out
            continue
        start = time.time()
        # the figures of the policy this round starts from come with this round's sampling
        previous = [x for x in summary["rounds"] if x["round"] == r - 1]
        eval_before = args.eval_problems > 0 and (
            summary["start"] is None if r == 1 else not (previous and previous[0].get("after")))
        result, before = run_round(args, r, policy, task, out, eval_before=eval_before)
        if r == 1 and before is not None:
            summary["start"] = before
        elif before is not None and previous:
            previous[0]["after"] = before
        result["round_seconds"] = round(time.time() - start, 1)
        write_json(done, result)
        summary["rounds"] = [x for x in summary["rounds"] if x["round"] != r] + [result]
        write_json(summary_path, summary)
        policy = out
        print(f"round {r}: " + "  ".join(f"{k} {v}" for k, v in result.items()), flush=True)
    # the last policy's held-out figures (and any round's that a resume skipped)
    for row in summary["rounds"] if args.eval_problems else ():
        if not row.get("after"):
            started = time.time()
            row["after"] = evaluate_only(args, row["policy"], task)
            row["round_seconds"] = round(row.get("round_seconds", 0) + time.time() - started, 1)
            write_json(summary_path, summary)
    print(table(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
