"""Monte-Carlo process labels (Math-Shepherd): how often does a step prefix still succeed?

    python -m verifier_training label-steps --records runs/arith/train_samples.jsonl \\
        --out runs/arith/train_labels.jsonl --rollouts 8 --max-records 6000

For each candidate, ``steps = split_steps(completion, separator)`` (the server's own
splitter; ``--step-separator``: a line for the worlds, a blank line for a dataset). For
each step prefix j = 1..S-1 the policy continues M times from the chat-templated question
followed by ``join_steps(steps[:j], separator)`` (token ids built with the policy tokenizer and
sent as ``Prompt(token_ids=...)``, so vLLM's prefix cache shares the question and steps);
k = how many of the M continuations reach the reference answer. The last step, the answer
line, needs no rollout: k = M if the candidate is correct, else 0.

The raw k-of-M counts are stored (``StepLabelRecord``); hard labels (a step is bad when
k == 0, Math-Shepherd's hard estimation) and soft labels (k / M) are derived on reading.

Cost control:

- ``--max-records N`` labels a seeded random subset of N candidates (default: all).
- Early stopping is ON by default: once a step has k == 0, later intermediate steps are not
  rolled out; they inherit "bad" and are flagged ``inferred`` (count None). In this world a
  wrong intermediate line carries its wrong value to the end, so the skipped rollouts would
  almost always return 0 as well. ``--no-early-stop`` rolls out every step.
- Identical prefixes of the same question are rolled out once (many candidates of a problem
  share their first lines); each prefix's request seed is derived from its text, so labels
  do not depend on which candidate asked first.

``--method exact`` needs no policy and no rollouts: it asks the task's step checker
(``Task.check_step``; arithmetic: the line's arithmetic; Countdown: true arithmetic on
available numbers that can still make the target; paths: a listed edge that chains on and
can still reach the target), so a step is good when it and every step before it pass (and,
for the answer line, the candidate is correct).
These are the labels a perfect human labeller would give (as in PRM800K) for the errors
the checker sees; they are written as 1-of-1 counts with ``labeller: "exact"``.

This module owns the labelling procedure; the record shape lives in ``data.records``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from bon_server.scorers.steps import DEFAULT_SEPARATOR, join_steps, split_steps
from bon_server.tasks import Task, check_question, get_task
from bon_server.tasks.args import add_task_args, checker_summary, task_from_args, task_separator
from bon_server.types import Prompt, SamplingParams
from verifier_training.cli import command_parser
from verifier_training.data.records import (
    LABELLERS,
    SampleRecord,
    StepLabelRecord,
    chat_messages,
    read_labels,
    read_samples,
    task_system_prompt,
    write_jsonl,
)
from verifier_training.data.sampling import (
    DEFAULT_PARAMS,
    add_engine_args,
    close,
    engine_options,
    gather,
    generate,
    open_generator,
)

# (question, reference, prefix text) -> number of M rollouts that reach the reference
Rollout = Callable[[str, str, str], Awaitable[int]]


def prefix_text(steps: Sequence[str], j: int, separator: str = DEFAULT_SEPARATOR) -> str:
    """What the policy continues from after its first ``j`` steps (j >= 1)."""
    return join_steps(steps[:j], separator)


async def label_candidate(
    record: SampleRecord,
    rollout: Rollout,
    m: int,
    *,
    early_stop: bool = True,
    seed: int = 0,
    policy: str | None = None,
    separator: str = DEFAULT_SEPARATOR,
) -> StepLabelRecord | None:
    """The k-of-M counts of every step of one candidate; None if it has no steps."""
    steps = split_steps(record.completion, separator)
    if not steps:
        return None
    n_inner = len(steps) - 1
    counts: list[int | None] = [None] * n_inner
    if early_stop:
        for j in range(n_inner):
            counts[j] = await rollout(record.question, record.reference,
                                      prefix_text(steps, j + 1, separator))
            if counts[j] == 0:
                break
    else:
        counts = list(
            await asyncio.gather(
                *(
                    rollout(record.question, record.reference,
                            prefix_text(steps, j + 1, separator))
                    for j in range(n_inner)
                )
            )
        )
    counts.append(m if record.correct else 0)
    return StepLabelRecord(
        problem_id=record.problem_id,
        sample_index=record.sample_index,
        question=record.question,
        reference=record.reference,
        steps=tuple(steps),
        counts=tuple(counts),
        rollouts=m,
        inferred=tuple(k is None for k in counts),
        correct=record.correct,
        policy=policy or record.policy,
        seed=seed,
    )


def policy_tokenizer(policy: str | None) -> Any:
    """The policy's tokenizer, for rollouts through an upstream (which keeps its own)."""
    if policy is None:
        raise ValueError("rollouts through --upstream need the policy's tokenizer: "
                         "pass --policy PATH (a directory or hub id)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(policy)


class GeneratorRollout:
    """Rollouts through a bon_server generator, one request (n = M) per distinct prefix."""

    def __init__(self, generator: Any, m: int, *, params: SamplingParams = DEFAULT_PARAMS,
                 seed: int = 0, concurrency: int = 64, task: Task | None = None) -> None:
        """``task``: whose checker grades a rollout (default: the world whose prompt the
        question is); a dataset's system prompt, if any, heads every rollout's chat."""
        self.generator = generator
        self.task = task
        self._tokenizer = getattr(generator, "tokenizer", None)
        self.m, self.params, self.seed = m, params, seed
        self._limit = asyncio.Semaphore(concurrency)
        self._cache: dict[tuple[str, str], asyncio.Task[int]] = {}
        self.requests = 0
        self.cache_hits = 0

    @property
    def tokenizer(self) -> Any:
        """A rollout continues a prefix written into the chat template: the engine's tokenizer,
        or (--upstream: no engine here) the policy's, loaded from --policy on first use."""
        if self._tokenizer is None:
            self._tokenizer = policy_tokenizer(getattr(self.generator, "policy", None))
        return self._tokenizer

    async def __call__(self, question: str, reference: str, prefix: str) -> int:
        key = (question, prefix)
        task = self._cache.get(key)
        if task is None:
            task = asyncio.ensure_future(self._run(question, reference, prefix))
            self._cache[key] = task
        else:
            self.cache_hits += 1
        return await task

    def token_ids(self, question: str, prefix: str) -> list[int]:
        messages = chat_messages(question, task_system_prompt(self.task))
        head = self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=True)
        return self.tokenizer.encode(head + prefix, add_special_tokens=False)

    async def _run(self, question: str, reference: str, prefix: str) -> int:
        seed = (self.seed * 1_000_003 + zlib.crc32(f"{question}\0{prefix}".encode())) % 2**31
        prompt = Prompt(token_ids=tuple(self.token_ids(question, prefix)))
        generation = await generate(self.generator, prompt, self.params, self.m, seed,
                                    self._limit)
        self.requests += 1
        return sum(self.check(question, reference, prefix + c.text)
                   for c in generation.candidates)

    def check(self, question: str, reference: str, text: str) -> bool:
        if self.task is None:
            return check_question(question, text)
        problem = self.task.parse(question)
        if problem is None and getattr(self.task, "finite", False):
            from bon_server.tasks.dataset import DatasetProblem

            problem = DatasetProblem(question, reference)  # a record's own reference
        return problem is not None and self.task.check(problem, text)


async def label_records(records: Sequence[SampleRecord], rollout: Rollout, m: int, *,
                        early_stop: bool = True, seed: int = 0, progress: bool = True,
                        desc: str = "label-steps", policy: str | None = None,
                        separator: str = DEFAULT_SEPARATOR) -> list[StepLabelRecord]:
    """Label every record (concurrently); records without steps are dropped."""
    labelled = await gather([label_candidate(r, rollout, m, early_stop=early_stop, seed=seed,
                                             policy=policy, separator=separator)
                             for r in records],
                            desc=desc, progress=progress)
    return [r for r in labelled if r is not None]


def exact_labels(records: Sequence[SampleRecord],
                 separator: str = DEFAULT_SEPARATOR) -> list[StepLabelRecord]:
    """Labels from the task's step checker: good until the first wrong step, no rollouts."""
    out = []
    for r in records:
        steps = tuple(split_steps(r.completion, separator))
        if not steps:
            continue
        task, problem = get_task(r.task), r.problem()
        counts, ok = [], True
        for j in range(len(steps)):
            ok = ok and task.check_step(problem, steps, j) is not False
            if j == len(steps) - 1:
                ok = ok and r.correct
            counts.append(int(ok))
        out.append(StepLabelRecord(
            problem_id=r.problem_id, sample_index=r.sample_index, question=r.question,
            reference=r.reference, steps=steps, counts=tuple(counts), rollouts=1,
            inferred=(False,) * len(steps), correct=r.correct, policy=r.policy, seed=0,
            labeller="exact"))
    return out


def choose_subset(records: Sequence[SampleRecord], n: int | None, seed: int) -> list[SampleRecord]:
    """A seeded random subset of ``n`` records (all when n is None), in file order."""
    if n is None or n >= len(records):
        return list(records)
    keep = set(random.Random(seed).sample(range(len(records)), n))
    return [r for i, r in enumerate(records) if i in keep]


def summarize(labels: Sequence[StepLabelRecord]) -> dict[str, Any]:
    steps = sum(len(r.steps) for r in labels)
    bad = sum(not g for r in labels for g in r.hard_labels())
    inferred = sum(sum(r.inferred) for r in labels)
    first = Counter(r.first_error() for r in labels)
    # An incorrect candidate whose every intermediate step still succeeds somewhere erred
    # at the answer line itself (or the rollouts were lucky).
    last_only = sum(1 for r in labels if not r.correct and r.first_error() == len(r.steps) - 1)
    n = max(1, len(labels))
    return {
        "records": len(labels),
        "correct_rate": round(sum(r.correct for r in labels) / n, 4),
        "steps": steps,
        "bad_step_rate": round(bad / max(1, steps), 4),
        "inferred_steps": inferred,
        "all_good_rate": round(first[-1] / n, 4),
        "first_error_histogram": {str(k): v for k, v in sorted(first.items())},
        "wrong_but_only_last_step_bad": last_only,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = command_parser("label-steps", __doc__)
    p.add_argument("--records", required=True, help="input JSONL of SampleRecords")
    p.add_argument("--out", required=True, help="output JSONL of StepLabelRecords (overwritten)")
    p.add_argument("--policy", default=None,
                   help="policy that rolls out (default: the records' own policy)")
    add_task_args(p)  # a dataset's records need their --dataset again (its checker)
    p.add_argument("--method", choices=LABELLERS, default="rollouts",
                   help="rollouts: Math-Shepherd k-of-M (default); exact: the arithmetic "
                        "world's step checker, no policy needed")
    p.add_argument("-m", "--rollouts", type=int, default=8, help="M: rollouts per step prefix")
    p.add_argument("--max-records", type=int, default=None,
                   help="label only a seeded random subset of this many records (default: all)")
    p.add_argument("--no-early-stop", action="store_true",
                   help="roll out every step, also after a step with k == 0 (default: stop "
                        "there and mark later intermediate steps bad, flagged inferred)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset and rollout requests")
    p.add_argument("--temperature", type=float, default=None,
                   help="rollout temperature (default: the records' sampling temperature)")
    p.add_argument("--top-p", type=float, default=None,
                   help="rollout top_p (default: the records' top_p)")
    p.add_argument("--max-tokens", type=int, default=128, help="most tokens per rollout")
    add_engine_args(p, concurrency=64)  # a request is a step prefix, n = M
    p.add_argument("--compare", default=None,
                   help="another StepLabelRecords JSONL of the same candidates (e.g. the "
                        "rollout labels): print how often the two labellers agree per step")
    p.add_argument("--no-progress", action="store_true", help="disable the progress bar")
    return p.parse_args(argv)


def agreement(ours: Sequence[StepLabelRecord], theirs: Sequence[StepLabelRecord]) -> dict:
    """Step by step, on the candidates both label: how often the hard labels agree, and the
    two kinds of disagreement (a step one calls good that the other calls bad)."""
    other = {r.key: r for r in theirs}
    both = good_bad = bad_good = candidates = 0
    for r in ours:
        o = other.get(r.key)
        if o is None or o.steps != r.steps:
            continue
        candidates += 1
        for a, b in zip(r.hard_labels(), o.hard_labels(), strict=True):
            both += a == b
            good_bad += a and not b
            bad_good += b and not a
    steps = both + good_bad + bad_good
    return {"candidates": candidates, "steps": steps,
            "agreement": round(both / steps, 4) if steps else None,
            "ours_good_theirs_bad": good_bad, "ours_bad_theirs_good": bad_good}


async def run_labelling(
    generator: Any,
    records: Sequence[SampleRecord],
    args: argparse.Namespace,
    policy: str,
    desc: str = "label-steps",
) -> tuple[list[StepLabelRecord], dict[str, int]]:
    """Label ``records`` with ``generator`` as ``args`` say; also returns rollout counters."""
    first = records[0] if records else None
    params = SamplingParams(
        temperature=args.temperature if args.temperature is not None else
        (first.temperature if first else 1.0),
        top_p=args.top_p if args.top_p is not None else (first.top_p if first else 1.0),
        max_tokens=args.max_tokens)
    task = get_task(first.task) if first else None
    roller = GeneratorRollout(generator, args.rollouts, params=params, seed=args.seed,
                              concurrency=args.concurrency, task=task)
    labels = await label_records(
        records, roller, args.rollouts, early_stop=not args.no_early_stop, seed=args.seed,
        progress=not args.no_progress, desc=desc, policy=policy,
        separator=task_separator(task, args) if task else DEFAULT_SEPARATOR,
    )
    return labels, {"rollout_requests": roller.requests, "prefix_cache_hits": roller.cache_hits}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(args.kv_cache_gib))

    records = choose_subset(read_samples(args.records), args.max_records, args.seed)
    if not records:
        raise SystemExit(f"no records in {args.records}")
    policy = args.policy or records[0].policy
    if args.dataset or args.task:
        task_from_args(args, policy)  # registers a dataset: its records' task resolves to it
    try:
        task = get_task(records[0].task)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    start = time.time()

    async def go() -> tuple[list[StepLabelRecord], dict[str, int]]:
        generator = open_generator(policy, seed=args.seed, **engine_options(args))
        try:
            return await run_labelling(generator, records, args, policy)
        finally:
            await close(generator)

    if args.method == "exact":
        labels, counters = exact_labels(records, task_separator(task, args)), {}
        how = " exactly"
    else:
        labels, counters = asyncio.run(go())
        how = ""
    write_jsonl(args.out, labels)
    print(f"labelled {len(labels)} candidates{how} in {time.time() - start:.0f} s -> {args.out}")
    print("  ".join(f"{k} {v}" for k, v in {**summarize(labels), **counters}.items()))
    if args.compare:
        found = agreement(labels, read_labels(args.compare))
        print(f"against {args.compare}: " + "  ".join(f"{k} {v}" for k, v in found.items()))
    if checker_summary(task):
        print(checker_summary(task))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
