"""How far the quickstart's chosen answer can be trusted: answer line and steps, per selector.

The quickstart's server (``make serve``: paths-policy, its verifier paths-orm choosing) is
asked held-out paths problems at best_of 16, once per selector. For each chosen answer it
counts whether the answer line is right (the world's checker) and whether every step line
above it is an edge of the graph that continues the path (the world's step checker), which
paths-orm does not read. One more row re-ranks the verifier's candidates here, in the client:
those whose step lines spell out their own answer path first (no ground truth needed), then by
the verifier's score: the probe of whether self-consistent steps should weigh in.

    make serve &   # or: .venv/bin/bon-server serve
    .venv/bin/python docs/measure_first_answer.py --base-url http://127.0.0.1:8000 --problems 200
"""

from __future__ import annotations

import argparse
import concurrent.futures

import httpx

from bon_server.tasks import get_task
from bon_server.tasks.base import EVAL_SEED, answer_line, completion_steps
from bon_server.tasks.paths import parse_edge, parse_path


def steps_hold(task, problem, text: str) -> bool:
    steps = completion_steps(text)
    return bool(steps) and all(task.check_step(problem, steps, i) for i in range(len(steps)))


def self_consistent(text: str) -> bool:
    """The step lines are exactly the answer path's edges, in order (reads no graph)."""
    found = answer_line(text)
    nodes = parse_path(found) if found is not None else None
    steps = [parse_edge(s) for s in completion_steps(text)]
    return nodes is not None and steps == list(zip(nodes, nodes[1:], strict=False))


def consistent_first(out: dict) -> str:
    cands = out["bon"]["candidates"]
    best = max(cands, key=lambda c: (self_consistent(c["text"]), c["score"]))
    return best["text"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url", required=True, help="the bon-server to ask")
    p.add_argument("--problems", type=int, default=200, help="held-out problems (seed 1234)")
    p.add_argument("--best-of", type=int, default=16, help="candidates per request")
    p.add_argument("--selectors", default="verifier,majority,weighted_majority,consistent_first",
                   help="comma-separated selectors to compare (consistent_first: see above)")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    args = p.parse_args()

    task = get_task("paths")
    problems = task.problems(args.problems, EVAL_SEED)
    model = httpx.get(f"{args.base_url}/v1/models", timeout=30).json()["data"][0]["id"]

    def ask(problem, selector: str, seed: int) -> str:
        consistent = selector == "consistent_first"
        body = {"model": model, "max_tokens": 128, "best_of": args.best_of, "seed": seed,
                "selector": "verifier" if consistent else selector,
                "return_candidates": consistent,
                "messages": [{"role": "user", "content": problem.question}]}
        r = httpx.post(f"{args.base_url}/v1/chat/completions", json=body, timeout=300)
        r.raise_for_status()
        out = r.json()
        return consistent_first(out) if consistent else out["choices"][0]["message"]["content"]

    print(f"model {model}, {len(problems)} held-out paths problems, best_of {args.best_of}")
    print("| selector | answer right | steps hold | both | right answer, steps wrong |")
    print("|---|---|---|---|---|")
    with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
        for selector in args.selectors.split(","):
            texts = list(pool.map(ask, problems, [selector] * len(problems), range(len(problems))))
            right = [task.check(pr, t) for pr, t in zip(problems, texts, strict=True)]
            hold = [steps_hold(task, pr, t) for pr, t in zip(problems, texts, strict=True)]
            n = len(problems)
            both = sum(r and h for r, h in zip(right, hold, strict=True))
            loose = sum(r and not h for r, h in zip(right, hold, strict=True))
            print(f"| {selector} | {sum(right) / n:.3f} | {sum(hold) / n:.3f} | {both / n:.3f} "
                  f"| {loose / n:.3f} |")


if __name__ == "__main__":
    main()
