"""Best-of-N curves of trained verifiers on held-out problems, plus PRM and ORM diagnostics.

    python -m verifier_training evaluate --records runs/arith/eval_samples.jsonl \\
        --orm runs/arith/orm --prm runs/arith/prm --labels runs/arith/eval_labels.jsonl \\
        --out-dir runs/arith/eval

K candidates per held-out problem are sampled ONCE (``--records``; sampled here with
``--policy`` when the file does not exist yet) and every candidate is scored once by the
ORM (one probability) and the PRM (one probability per step, kept, so every aggregation is
computed without rescoring; written to ``scores.jsonl``). Then, for N = 1, 2, 4, ..., K,
``--subsets`` random subsets of N candidates per problem (seeded; every subset when there
are few, so N = 1 and N = K are exact) are judged by every method, and the accuracy is
averaged over subsets, then over problems:

    pass@1                 a random candidate is correct (the mean correctness)
    majority               most frequent extracted answer (bon_server's selector)
    weighted_majority_orm  answer with the largest sum of ORM scores
    weighted_majority_prm  answer with the largest sum of PRM scores (``--prm-aggregation``)
    orm                    ORM argmax
    prm_<agg>              PRM argmax, steps aggregated by min, prod, last or mean
    oracle                 some candidate is correct (pass@N)

With ``--partial-checks``, each of the task's partial checks (the code world's: the tests its
prompt shows, what a server given those tests runs) is a selector too, as the server ranks a
request with ``tests``: candidates passing it first, ties by majority (``<check>``) and by the
ORM (``<check>+orm``).

Selection goes through ``bon_server.selectors`` and ``bon_server.scorers.base.aggregate``,
so ties and aggregation behave exactly as in the server.

Diagnostics: the PRM's first-error F1 in the manner of ProcessBench on held-out labelled
solutions (``--labels``; the predicted first error is the first step scored below 0.5;
accuracy on solutions with an error and on all-good ones, F1 their harmonic mean), and the
ORM's (and each PRM aggregation's) pairwise accuracy: how often a correct candidate scores
above an incorrect one of the same problem.

Writes ``eval.json``, ``eval.csv`` (N, method, accuracy, standard error) and ``eval.png``
(accuracy against N, log2 axis, one line per method) to ``--out-dir``.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from bon_server.scorers.base import AGGREGATIONS, aggregate
from bon_server.scorers.steps import split_steps
from bon_server.selectors import majority, verifier, weighted_majority
from bon_server.tasks import get_task
from bon_server.tasks.args import add_task_args, task_flags, task_from_args, task_separator
from verifier_training.cli import command_parser
from verifier_training.data.records import (
    SampleRecord,
    StepLabelRecord,
    first_error,
    question_prompt,
    read_labels,
    read_samples,
    write_json,
)
from verifier_training.evaluate.metrics import (
    best_of_n,
    first_error_f1,
    gap_closed,
    oracle,
    pairwise_accuracy,
    pass_at_1,
    pick,
    powers_of_two,
    table,
)

THRESHOLD = 0.5  # a step scored below this is predicted wrong (ProcessBench)


@dataclass(frozen=True, slots=True)
class Scored:
    """One candidate with what the verifiers said about it."""

    problem_id: str
    sample_index: int
    answer: str | None
    correct: bool
    orm: float | None
    prm_steps: tuple[float, ...] | None
    partial: dict[str, bool] | None = None  # the task's partial checks (--partial-checks)

    def prm(self, how: str) -> float:
        return aggregate(self.prm_steps or (), how)


# ------------------------------------------------------------------------------ methods

def right_answer_wrong_steps(
    records: Sequence[SampleRecord], scored: Sequence[Scored], aggregation: str
) -> dict[str, Any]:
    """Correct candidates with a step the task's step checker refuses, and the mean ORM and
    PRM scores of those against correct candidates whose every step passes."""
    from bon_server.scorers.steps import split_steps
    from bon_server.tasks import get_task

    groups: dict[bool, list[Scored]] = {True: [], False: []}
    for r, s in zip(records, scored, strict=True):
        if not r.correct:
            continue
        task, problem = get_task(r.task), r.problem()
        steps = split_steps(r.completion)
        bad = any(task.check_step(problem, steps, j) is False for j in range(len(steps)))
        groups[bad].append(s)

    def mean(values: list[float | None]) -> float | None:
        kept = [v for v in values if v is not None]
        return round(sum(kept) / len(kept), 4) if kept else None

    out: dict[str, Any] = {"right_answer_wrong_steps": len(groups[True]),
                           "right_answer_right_steps": len(groups[False])}
    for bad, name in ((True, "wrong_steps"), (False, "right_steps")):
        out[f"mean_orm_{name}"] = mean([s.orm for s in groups[bad]])
        out[f"mean_prm_{aggregation}_{name}"] = mean(
            [s.prm(aggregation) if s.prm_steps is not None else None for s in groups[bad]])
    return out


def methods_for(has_orm: bool, has_prm: bool, wm_prm_agg: str,
                partial: Sequence[str] = ()) -> dict[str, Callable]:
    """Method name -> function(candidates) -> is the chosen candidate correct (a float)."""
    methods: dict[str, Callable] = {
        "pass@1": pass_at_1,
        "majority": pick(majority, None),
    }
    for name in partial:
        passed = lambda c, name=name: float(c.partial[name])  # noqa: E731
        methods[name] = pick(majority, None, passed)
        if has_orm:
            methods[f"{name}+orm"] = pick(verifier, lambda c: c.orm, passed)
    if has_orm:
        methods["weighted_majority_orm"] = pick(weighted_majority, lambda c: c.orm)
    if has_prm:
        methods["weighted_majority_prm"] = pick(weighted_majority, lambda c: c.prm(wm_prm_agg))
    if has_orm:
        methods["orm"] = pick(verifier, lambda c: c.orm)
    if has_prm:
        for how in AGGREGATIONS:
            methods[f"prm_{how}"] = pick(verifier, lambda c, how=how: c.prm(how))
    methods["oracle"] = oracle
    return methods


# --------------------------------------------------------------------------------- scoring

def score_orm(path: str, records: Sequence[SampleRecord], batch_size: int,
              progress: bool) -> dict[tuple[str, str], float]:
    """ORM probability of each distinct (question, completion)."""
    from tqdm import tqdm

    from bon_server.scorers.orm import ORMScorer, format_for_orm

    scorer = ORMScorer.from_pretrained(path, device="cpu", batch_size=batch_size)
    unique = sorted({(r.question, r.completion) for r in records}, key=lambda qc: len(qc[1]))
    texts = [format_for_orm(scorer.tokenizer, question_prompt(q), c) for q, c in unique]
    out: dict[tuple[str, str], float] = {}
    for start in tqdm(range(0, len(texts), batch_size), desc="score-orm", disable=not progress,
                      mininterval=2.0):
        for key, p in zip(unique[start : start + batch_size],
                          scorer.score_texts(texts[start : start + batch_size]), strict=True):
            out[key] = p
    return out


def score_prm(path: str, pairs: Sequence[tuple[str, Sequence[str]]], batch_size: int,
              progress: bool) -> dict[tuple[str, tuple[str, ...]], list[float]]:
    """PRM step probabilities of each distinct (question, steps); [] where nothing scores."""
    from tqdm import tqdm

    from bon_server.scorers.prm import PRMScorer
    from bon_server.scorers.steps import encode_steps

    scorer = PRMScorer.from_pretrained(path, device="cpu", batch_size=batch_size)
    unique = sorted({(q, tuple(s)) for q, s in pairs}, key=lambda qs: sum(map(len, qs[1])))
    out: dict[tuple[str, tuple[str, ...]], list[float]] = {}
    encoded = []
    for q, steps in unique:
        try:
            encoded.append(((q, steps), encode_steps(scorer.fmt, scorer.tokenizer,
                                                     question_prompt(q), steps)))
        except ValueError:  # no steps or a tag inside a step: the server scores it 0 too
            out[(q, steps)] = []
    for start in tqdm(range(0, len(encoded), batch_size), desc="score-prm",
                      disable=not progress, mininterval=2.0):
        chunk = encoded[start : start + batch_size]
        for (key, _), s in zip(chunk, scorer.score_steps([e for _, e in chunk]), strict=True):
            out[key] = s
    return out


def add_verifier_args(p: argparse.ArgumentParser, purpose: str) -> None:
    """--orm / --prm / --prm-aggregation: the verifier ``verifier_scores`` reads."""
    p.add_argument("--orm", default=None, help=f"an ORM directory ({purpose})")
    p.add_argument("--prm", default=None, help=f"a PRM directory ({purpose})")
    p.add_argument("--prm-aggregation", default="min", help="how a PRM's step scores combine")


def verifier_scores(args: argparse.Namespace, records) -> dict[tuple[str, int], float]:  # type: ignore[no-untyped-def]
    """Each record's verifier score, by its key (ORM probability, or PRM steps aggregated by
    --prm-aggregation), the verifier given by ``add_verifier_args``' flags."""
    progress = not args.no_progress
    if args.orm:
        orm = score_orm(args.orm, records, 64, progress)
        return {r.key: orm[(r.question, r.completion)] for r in records}
    sep = task_separator(get_task(records[0].task), args) if records else "\n"
    prm = score_prm(args.prm, [(r.question, split_steps(r.completion, sep)) for r in records],
                    64, progress)
    out = {}
    for r in records:
        steps = prm[(r.question, tuple(split_steps(r.completion, sep)))]
        out[r.key] = aggregate(steps, args.prm_aggregation) if steps else 0.0
    return out


# ------------------------------------------------------------------------------ reporting

def partial_checks(record: SampleRecord) -> dict[str, bool]:
    """The record's task's partial checks of its completion (the code world's run its program
    on the prompt's examples in the sandbox)."""
    return get_task(record.task).partial_checks(record.problem(), record.completion)


def write_csv(path: str, curve: dict[str, dict[int, tuple[float, float]]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["n", "method", "accuracy", "stderr"])
        for name, by_n in curve.items():
            for n, (mean, se) in sorted(by_n.items()):
                w.writerow([n, name, f"{mean:.5f}", f"{se:.5f}"])


def plot(path: str, curve: dict[str, dict[int, tuple[float, float]]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    styles: dict[str, dict[str, Any]] = {
        "pass@1": dict(ls="--", color="gray"), "oracle": dict(ls=":", color="black"),
        "majority": dict(color="tab:blue", lw=2),
        "weighted_majority_orm": dict(color="tab:cyan", ls="-."),
        "weighted_majority_prm": dict(color="tab:olive", ls="-."),
        "orm": dict(color="tab:green", lw=2), "prm_min": dict(color="tab:red", lw=2),
        "prm_prod": dict(color="tab:purple"), "prm_last": dict(color="tab:brown"),
        "prm_mean": dict(color="tab:pink"),
    }
    for name, by_n in curve.items():
        ns = sorted(by_n)
        ax.plot(ns, [by_n[n][0] for n in ns], marker="o", ms=3, label=name,
                **styles.get(name, {}))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N (candidates per problem)")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------ main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = command_parser("evaluate", __doc__)
    p.add_argument("--records", required=True,
                   help="held-out SampleRecords JSONL (sampled here if the file does not exist)")
    p.add_argument("--orm", default=None, help="ORM model directory (omit to skip ORM methods)")
    p.add_argument("--prm", default=None, help="PRM model directory (omit to skip PRM methods)")
    p.add_argument("--labels", default=None,
                   help="held-out StepLabelRecords JSONL for the PRM's first-error F1")
    p.add_argument("--out-dir", required=True, help="where eval.json/.csv/.png and scores go")
    p.add_argument("--subsets", type=int, default=32,
                   help="random N-subsets per problem and N (one when N equals K)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset draws")
    p.add_argument("--prm-aggregation", default="min", choices=list(AGGREGATIONS),
                   help="step aggregation used by weighted_majority_prm")
    p.add_argument("--partial-checks", action="store_true",
                   help="select by each of the task's partial checks too (the code world: the "
                        "prompt's visible tests), ties by majority and by the ORM")
    p.add_argument("--batch-size", type=int, default=128, help="verifier scoring batch size")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads for scoring")
    # only used when --records must be sampled first
    p.add_argument("--policy", default="bon_server/embedded/arith-policy",
                   help="policy to sample from when --records does not exist")
    p.add_argument("--problems", type=int, default=500, help="held-out problems to sample")
    p.add_argument("--problem-seed", type=int, default=1234,
                   help="held-out problem stream seed (training uses 101)")
    p.add_argument("-k", "--k", type=int, default=64, help="candidates per held-out problem")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--max-tokens", type=int, default=128, help="most tokens per candidate")
    p.add_argument("--no-progress", action="store_true", help="disable progress bars")
    add_task_args(p)  # a dataset's records need their --dataset again; its step separator
    return p.parse_args(argv)


def ensure_records(args: argparse.Namespace) -> list[SampleRecord]:
    if os.path.exists(args.records):
        return read_samples(args.records)
    from verifier_training.data import sampling

    sample_args = sampling.parse_args([
        "--policy", args.policy, "--out", args.records, "--problems", str(args.problems),
        "--seed", str(args.problem_seed), "--split", "eval", "-k", str(args.k),
        "--temperature", str(args.temperature), "--max-tokens", str(args.max_tokens),
    ] + (["--no-progress"] if args.no_progress else []) + task_flags(args))
    records = asyncio.run(sampling.run(sample_args, task_from_args(args, args.policy)))
    from verifier_training.data.records import write_jsonl

    write_jsonl(args.records, records)
    return records


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.time()
    if args.dataset:
        task_from_args(args, args.policy)  # registers it: its records' task resolves to it
    records = ensure_records(args)
    try:
        separator = task_separator(get_task(records[0].task), args) if records else "\n"
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    sampled_s = time.time() - start
    progress = not args.no_progress
    labels: list[StepLabelRecord] = read_labels(args.labels) if args.labels else []
    os.makedirs(args.out_dir, exist_ok=True)

    # --- score every distinct candidate once ---------------------------------------------
    import torch

    torch.set_num_threads(args.threads)
    from bon_server.scorers.steps import split_steps

    t0 = time.time()
    orm = score_orm(args.orm, records, args.batch_size, progress) if args.orm else {}
    orm_s = time.time() - t0
    t0 = time.time()
    prm: dict[tuple[str, tuple[str, ...]], list[float]] = {}
    if args.prm:
        wanted = [(r.question, split_steps(r.completion, separator)) for r in records]
        wanted += [(lab.question, lab.steps) for lab in labels]
        prm = score_prm(args.prm, wanted, args.batch_size, progress)
    prm_s = time.time() - t0
    t0 = time.time()
    partial = [partial_checks(r) if args.partial_checks else None for r in records]
    partial_s = time.time() - t0
    partial_names = sorted(partial[0]) if records and partial[0] else []
    scored = [
        Scored(r.problem_id, r.sample_index, r.answer, r.correct,
               orm.get((r.question, r.completion)) if args.orm else None,
               tuple(prm[(r.question, tuple(split_steps(r.completion, separator)))])
               if args.prm else None, checks)
        for r, checks in zip(records, partial, strict=True)
    ]
    with open(os.path.join(args.out_dir, "scores.jsonl"), "w") as f:
        for s in scored:
            f.write(json.dumps(asdict(s)) + "\n")

    # --- Best-of-N curves ------------------------------------------------------------------
    groups: dict[str, list[Scored]] = {}
    for s in scored:
        groups.setdefault(s.problem_id, []).append(s)
    k = min(len(g) for g in groups.values())
    ns = powers_of_two(k)
    methods = methods_for(bool(args.orm), bool(args.prm), args.prm_aggregation, partial_names)
    t0 = time.time()
    curve = best_of_n(list(groups.values()), methods, ns, args.subsets, args.seed)
    curve_s = time.time() - t0

    # --- diagnostics -------------------------------------------------------------------------
    pairwise: dict[str, float | None] = {}
    if args.orm:
        pairwise["orm"] = pairwise_accuracy([[(s.orm, s.correct) for s in g]
                                             for g in groups.values()])
    if args.prm:
        for how in AGGREGATIONS:
            pairwise[f"prm_{how}"] = pairwise_accuracy([[(s.prm(how), s.correct) for s in g]
                                                        for g in groups.values()])
    processbench = None
    if args.prm and labels:
        unique = {(lab.problem_id, lab.steps): lab for lab in labels}.values()
        ref = [lab.first_error() for lab in unique]
        pred = [first_error([p >= THRESHOLD for p in prm[(lab.question, lab.steps)]])
                for lab in unique]
        processbench = {**first_error_f1(ref, pred), "solutions": len(ref),
                        "threshold": THRESHOLD, "deduplicated_by": "problem and steps"}

    wrong_steps = right_answer_wrong_steps(records, scored, args.prm_aggregation)
    gaps = {m: gap_closed(curve, m, n) for m in curve if m not in ("pass@1", "oracle")
            for n in [16] if n in ns}
    prm_aggs = [m for m in curve if m.startswith("prm_")]
    best_agg = max(prm_aggs, key=lambda m: curve[m][16 if 16 in ns else ns[-1]][0]) \
        if prm_aggs else None
    result = {
        "records": args.records,
        "problems": len(groups),
        "k": k,
        "orm": args.orm,
        "prm": args.prm,
        "subsets": args.subsets,
        "seed": args.seed,
        "prm_aggregation_for_weighted_majority": args.prm_aggregation,
        "curve": {m: {str(n): {"accuracy": round(a, 5), "stderr": round(se, 5)}
                      for n, (a, se) in by_n.items()} for m, by_n in curve.items()},
        "gap_closed_at_16": {m: None if g is None else round(g, 4) for m, g in gaps.items()},
        "best_prm_aggregation_at_16": best_agg,
        "pairwise_accuracy": {m: None if v is None else round(v, 4) for m, v in pairwise.items()},
        "processbench": processbench,
        "right_answer_wrong_steps": wrong_steps,
        "seconds": {"sample": round(sampled_s, 1), "score_orm": round(orm_s, 1),
                    "score_prm": round(prm_s, 1), "partial_checks": round(partial_s, 1),
                    "best_of_n": round(curve_s, 1),
                    "total": round(time.time() - start, 1)},
    }
    write_json(os.path.join(args.out_dir, "eval.json"), result)
    write_csv(os.path.join(args.out_dir, "eval.csv"), curve)
    plot(os.path.join(args.out_dir, "eval.png"), curve,
         f"Best-of-N on {len(groups)} held-out problems (K={k})")

    print(table(curve, ns))
    if gaps:
        print("gap closed at N=16: " + "  ".join(f"{m} {g:.2f}" for m, g in gaps.items()
                                                 if g is not None))
    print("pairwise accuracy: " + "  ".join(f"{m} {v:.3f}" for m, v in pairwise.items()
                                            if v is not None))
    if wrong_steps["right_answer_wrong_steps"]:
        print("right answer, wrong steps: " + "  ".join(f"{k} {v}" for k, v in wrong_steps.items()))
    if processbench:
        print("PRM first-error (ProcessBench): " + "  ".join(
            f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
            for k, v in processbench.items()))
    print(f"wrote {args.out_dir}/eval.json, eval.csv, eval.png in {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
