"""The ORM with and without prompt sharing, side by side (`python docs/bench_orm_prefix.py`).

Scores the same texts with the shipped paths verifier (``bon_server/embedded/paths-orm``) two
ways, in alternating rounds on one machine: every text in full in one padded batch (as before),
and each request's shared prompt once (``ORMScorer.score_texts`` now). The texts are paths
prompts with 16 candidates each, the reference solution and copies edited by the task's own
``corrupt`` (the policy's shapes, no sampling): one request (16 texts, as at concurrency 1)
and four (64, one micro-batch under load). Prints a table of median milliseconds, the ratio and
the largest difference between the two ways' scores.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from bon_server.scorers.orm import ORMScorer, format_for_orm
from bon_server.tasks import get_task
from bon_server.types import Message, Prompt


def texts_for(scorer: ORMScorer, requests: int, seed: int) -> list[str]:
    task, rng = get_task("paths"), random.Random(seed)
    texts = []
    for problem in task.problems(requests, seed=seed):
        prompt = Prompt(messages=(Message("user", problem.question),))
        reference = task.reference(problem)
        for k in range(16):
            edited = task.corrupt(problem, reference, rng) if k % 3 else None
            texts.append(format_for_orm(scorer.tokenizer, prompt, edited or reference))
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verifier", default="bon_server/embedded/paths-orm")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shared = ORMScorer.from_pretrained(args.verifier, device="cpu")
    full = ORMScorer(shared.model, shared.tokenizer, share_prefix=False)
    print("| texts | in full (ms) | prompt shared (ms) | in full / shared | max score difference |")
    print("|---|---|---|---|---|")
    for requests in (1, 4):
        times: dict[str, list[float]] = {"full": [], "shared": []}
        diff = 0.0
        for r in range(args.rounds):
            texts = texts_for(shared, requests, seed=r)
            scores = {}
            sides = [("full", full), ("shared", shared)]
            for name, scorer in sides if r % 2 else sides[::-1]:
                start = time.perf_counter()
                scores[name] = scorer.score_texts(texts)
                times[name].append(time.perf_counter() - start)
            diff = max(diff, *(abs(a - b) for a, b in zip(*scores.values(), strict=True)))
        full_ms = statistics.median(times["full"]) * 1000
        shared_ms = statistics.median(times["shared"]) * 1000
        print(f"| {16 * requests} ({requests} request{'s' if requests > 1 else ''}) | "
              f"{full_ms:.0f} | {shared_ms:.0f} | {full_ms / shared_ms:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
