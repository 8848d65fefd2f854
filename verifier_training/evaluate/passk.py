"""Measure a policy on fresh problems of its world with in-process vLLM.

    python -m verifier_training passk --model bon_server/embedded/arith-policy
    python -m verifier_training passk --model bon_server/embedded/paths-policy --problems 500

Samples K completions per problem (chat-templated question, temperature 1.0 by default) and
prints:

- pass@1: the mean fraction of correct samples (the unbiased estimator of pass@1),
- pass@K: the fraction of problems with at least one correct sample among the K,
- majority@K: the fraction of problems whose most common extracted answer is correct
  (samples without an answer do not vote; ties go to the answer seen first).

The problems come from the task's ``problems(n, seed)``, their own ``random.Random(seed)``
stream (default 1234, the held-out stream: ``sft`` never trains on its first 1000 prompts).
Correctness is the task's checker; majority votes by the extracted answer and checks the
winner's text with the same checker.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections import Counter

from bon_server.answers import extract_answer
from bon_server.tasks.args import add_task_args, checker_summary, task_from_args
from verifier_training.cli import command_parser
from verifier_training.data.records import chat_messages, task_system_prompt


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = command_parser("passk", __doc__)
    p.add_argument(
        "--model", required=True, help="model directory (or id) that vLLM loads, tokenizer included"
    )
    p.add_argument("--problems", type=int, default=500,
                   help="number of fresh problems (a dataset: of its held-out part at the "
                        "default seed, else of its training part)")
    add_task_args(p)
    p.add_argument(
        "--seed", type=int, default=1234, help="seed of the problem stream (training uses another)"
    )
    p.add_argument("-k", "--k", type=int, default=16, help="samples per problem")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--max-tokens", type=int, default=128, help="most tokens per completion")
    p.add_argument("--max-model-len", type=int, default=512, help="vLLM context length")
    p.add_argument("--dtype", default="auto", help="engine dtype (auto: native bfloat16 where "
                   "the hardware has it, else float32)")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    return p.parse_args(argv)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al., 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority_correct(task, problem, texts: list[str]) -> bool:  # type: ignore[no-untyped-def]
    """Is the most common extracted answer (by the world's rules: the server's vote; None
    excluded, first seen wins ties) correct?"""
    answers = [extract_answer(t, task.answer_rules) for t in texts]
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return False
    winner = votes.most_common(1)[0][0]
    return task.check(problem, texts[answers.index(winner)])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams  # imported late: heavy, and only this command needs it

    task = task_from_args(args, args.model)
    problems = task.problems(args.problems, args.seed)
    # No chunked prefill: a seeded request whose prefill is split crashes the CPU sampler
    # ("CPU Generator does not use offset", vLLM 0.32).
    from bon_server.dtypes import resolve_engine_dtype

    dtype = resolve_engine_dtype(args.dtype, what="passk engine")
    llm = LLM(
        model=args.model,
        dtype=dtype,
        max_model_len=args.max_model_len,
        seed=args.seed,
        enable_chunked_prefill=False,
    )
    tokenizer = llm.get_tokenizer()
    prompts = []
    for problem in problems:
        text = tokenizer.apply_chat_template(
            chat_messages(problem.question, task_system_prompt(task)),
            tokenize=False,
            add_generation_prompt=True,
        )
        prompts.append({"prompt_token_ids": tokenizer.encode(text, add_special_tokens=False)})
    # One seed per problem: the samples do not depend on how vLLM batches the requests.
    params = [
        SamplingParams(
            n=args.k,
            temperature=args.temperature,
            max_tokens=args.max_tokens,
            seed=args.seed * 100_003 + i,
        )
        for i in range(len(problems))
    ]
    start = time.time()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.time() - start

    pass1, passk, majority, no_answer, truncated = [], [], [], 0, 0
    for problem, output in zip(problems, outputs, strict=True):
        texts = [o.text for o in output.outputs]
        correct = sum(task.check(problem, t) for t in texts)
        pass1.append(pass_at_k(len(texts), correct, 1))
        passk.append(pass_at_k(len(texts), correct, args.k))
        majority.append(majority_correct(task, problem, texts))
        truncated += sum(o.finish_reason == "length" for o in output.outputs)
        no_answer += sum(extract_answer(t, task.answer_rules) is None for t in texts)
    samples = len(problems) * args.k
    result = {
        "model": args.model,
        "task": task.name,
        "dtype": dtype,
        "problems": len(problems),
        "seed": args.seed,
        "k": args.k,
        "temperature": args.temperature,
        "max_tokens": args.max_tokens,
        "pass@1": sum(pass1) / len(problems),
        f"pass@{args.k}": sum(passk) / len(problems),
        f"majority@{args.k}": sum(majority) / len(problems),
        "no_answer_rate": no_answer / samples,
        "truncated_rate": truncated / samples,
        "generate_seconds": round(seconds, 1),
    }
    rows = [
        ("model", args.model),
        ("problems", f"{len(problems)} (seed {args.seed})"),
        ("dtype", dtype),
        (
            "samples",
            f"{args.k} per problem, temperature {args.temperature}, max_tokens {args.max_tokens}",
        ),
        ("pass@1", f"{result['pass@1']:.3f}"),
        (f"pass@{args.k}", f"{result[f'pass@{args.k}']:.3f}"),
        (f"majority@{args.k}", f"{result[f'majority@{args.k}']:.3f}"),
        ("no answer", f"{result['no_answer_rate']:.1%} of samples"),
        ("truncated", f"{result['truncated_rate']:.1%} of samples"),
        ("generation", f"{seconds:.1f} s"),
    ]
    width = max(len(name) for name, _ in rows)
    print("\n".join(f"{name:<{width}}  {value}" for name, value in rows))
    if checker_summary(task):
        print(checker_summary(task))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
