"""What a verifier could be worth on these samples: Best-of-N with scorers that need no training.

    python -m verifier_training.research ceilings --records runs/arith/eval_samples.jsonl

A trained ORM or PRM is judged against these, on the same held-out candidates and the same
subset draws as ``evaluate``:

    majority               most frequent answer (the server's default without a verifier)
    exact_step_checker     argmax of "every step passes the task's step checker"
                           (``Task.check_step``; arithmetic: each ``a op b = c`` line is
                           right): a perfect step verifier that never sees the answer line
    weighted_majority_exact  answer with the most candidates that pass the step checker
    <partial checks>       argmax of each of the task's ``partial_checks``: a verifier that
                           knows one part of the checker (arithmetic: ``+``/``-`` lines only;
                           Countdown: the answer's value only, its numbers only; paths: the
                           path's ends only, its edges only)
    policy_mean_logprob    argmax of the policy's mean token log-probability (what the
                           server's ``logprob`` selector does)
    policy_greedy_steps    (arithmetic, char-level policies) argmax of "every result the
                           candidate wrote is the policy's own greedy choice", ties broken by
                           mean log-probability: the policy checking its arithmetic itself
    oracle                 some candidate is correct (pass@N)

The exact checker is an upper bound for a step verifier; the policy rows show how much the
policy's own knowledge can tell right from wrong. A learned verifier that beats the policy
rows has learned arithmetic the policy does not know.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bon_server.scorers.steps import split_steps
from bon_server.selectors import majority, verifier, weighted_majority
from bon_server.tasks import get_task
from verifier_training.cli import command_parser
from verifier_training.data.records import SampleRecord, read_samples, write_json
from verifier_training.evaluate.metrics import (
    best_of_n,
    gap_closed,
    oracle,
    pass_at_1,
    pick,
    powers_of_two,
    table,
)
from verifier_training.research import RESEARCH
from verifier_training.train.common import DEFAULT_POLICY, pad


@dataclass(frozen=True, slots=True)
class Candidate:
    """One held-out candidate and what each untrained scorer says of it."""

    answer: str | None
    correct: bool
    mean_lp: float  # the policy's mean token log-probability
    exact: float  # 1.0: every step passes the task's step checker
    partial: dict[str, float]  # the task's partial checks, 1.0 or 0.0
    greedy: float  # 1.0 (+ a log-prob tie-break): every result is the policy's argmax


def policy_token_stats(
    policy: str, pairs: Sequence[tuple[str, str]], batch_size: int
) -> dict[tuple[str, str], list[tuple[float, bool]]]:
    """(question, completion) -> per completion character: (log-probability, is greedy)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(policy)
    model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32).eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: dict[tuple[str, str], list[tuple[float, bool]]] = {}
    order = sorted(pairs, key=lambda p: len(p[0]) + len(p[1]))
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}],
                                                     tokenize=False, add_generation_prompt=True)
                       for q, _ in chunk]
            p_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
            c_ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for _, c in chunk]
            rows = [p + c for p, c in zip(p_ids, c_ids, strict=True)]
            ids = pad(rows, pad_id)
            logits = model(input_ids=ids, attention_mask=(ids != pad_id).long()).logits.float()
            logp = torch.log_softmax(logits, dim=-1)
            greedy = logits.argmax(dim=-1)
            for i, key in enumerate(chunk):
                p, n = len(p_ids[i]), len(c_ids[i])
                at = torch.arange(p - 1, p + n - 1)
                nxt = ids[i, p : p + n]
                lp = logp[i, at, nxt].tolist()
                ok = (greedy[i, at] == nxt).tolist()
                out[key] = list(zip(lp, ok, strict=True))
    return out


def greedy_steps_ok(completion: str, stats: Sequence[tuple[float, bool]]) -> bool:
    """Every result (the text after ``= ``) of every step is the policy's greedy choice.

    Needs one token per character (the arithmetic policy's tokenizer)."""
    pos, ok = 0, True
    for line in completion.split("\n"):
        if "= " in line:
            start = pos + line.index("= ") + 2
            ok = ok and all(g for _, g in stats[start : pos + len(line)])
        pos += len(line) + 1
    return ok


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = command_parser("ceilings", __doc__, entry=RESEARCH)
    p.add_argument("--records", required=True, help="held-out SampleRecords JSONL (K per problem)")
    p.add_argument("--policy", default=DEFAULT_POLICY, help="the policy that wrote the records")
    p.add_argument("--out", default=None, help="write the curve as JSON here")
    p.add_argument("--subsets", type=int, default=32, help="random N-subsets per problem and N")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset draws")
    p.add_argument("--batch-size", type=int, default=128, help="policy forward batch size")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.time()
    import torch

    torch.set_num_threads(args.threads)
    records: list[SampleRecord] = read_samples(args.records)
    keys = list(dict.fromkeys((r.question, r.completion) for r in records))
    stats = policy_token_stats(args.policy, keys, args.batch_size)

    groups: dict[str, list[Candidate]] = {}
    for r in records:
        s = stats[(r.question, r.completion)]
        mean_lp = sum(lp for lp, _ in s) / max(1, len(s))
        task, problem = get_task(r.task), r.problem()
        steps = split_steps(r.completion)
        checks = [task.check_step(problem, steps, j) for j in range(len(steps))]
        groups.setdefault(r.problem_id, []).append(Candidate(
            answer=r.answer, correct=r.correct, mean_lp=mean_lp,
            exact=float(all(c is not False for c in checks)),
            partial={k: float(v) for k, v in task.partial_checks(problem, r.completion).items()},
            greedy=float(greedy_steps_ok(r.completion, s)) + 0.01 * math.tanh(mean_lp),
        ))

    first = next(iter(groups.values()))[0]
    methods = {
        "pass@1": pass_at_1,
        "majority": pick(majority, None),
        "exact_step_checker": pick(verifier, lambda c: c.exact),
        "weighted_majority_exact": pick(weighted_majority, lambda c: c.exact),
        **{name: pick(verifier, lambda c, name=name: c.partial[name]) for name in first.partial},
        "policy_mean_logprob": pick(verifier, lambda c: c.mean_lp),
    }
    if records[0].task == "arith":  # needs one token per character and `= ` results
        methods["policy_greedy_steps"] = pick(verifier, lambda c: c.greedy)
    methods["oracle"] = oracle
    wrong = [c for g in groups.values() for c in g if not c.correct]
    caught = sum(c.exact == 0.0 for c in wrong)
    print(f"wrong candidates with a step the step checker refuses: {caught} of {len(wrong)}")
    k = min(len(g) for g in groups.values())
    ns = powers_of_two(k)
    curve = best_of_n(list(groups.values()), methods, ns, args.subsets, args.seed)
    print(table(curve, ns))
    n16 = 16 if 16 in ns else ns[-1]
    gaps = {m: gap_closed(curve, m, n16) for m in methods if m not in ("pass@1", "oracle")}
    print(f"gap closed at N={n16}: " + "  ".join(f"{m} {g:.2f}" for m, g in gaps.items()
                                                 if g is not None))
    if args.out:
        write_json(args.out, {
            "records": args.records, "policy": args.policy, "problems": len(groups), "k": k,
            "curve": {m: {str(n): round(a, 5) for n, (a, _) in by_n.items()}
                      for m, by_n in curve.items()},
            "gap_closed": {m: None if g is None else round(g, 4) for m, g in gaps.items()},
            "wrong_with_a_wrong_step": [caught, len(wrong)],
        })
    print(f"done in {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
