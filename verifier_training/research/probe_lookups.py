"""Has a graph-paths policy learned to follow the edges listed in its prompt?

    python -m verifier_training.research probe-lookups --model runs/paths/policy

A paths answer is a chain of lookups ("the node after ``57>`` in the prompt"), and a policy that
has learned none can still write well-formed paths: it copies some label from the prompt and
ends on the target, which the prompt names. ``passk`` only says that such paths are wrong; this
says where the policy stands, in two tables (held-out problems, seed 1234, transformers on CPU):

- **teacher-forced loss per answer position**, in nats, on the reference solutions: the first
  node after the start (a lookup with ``d`` right answers: ``ln d``, about 1.1 on average, is the
  best a policy can do without planning), a middle node (one right answer: near 0 once the
  lookup is learned), the last node (the target), the answer line (a copy of the steps), and,
  for scale, ``uniform copy``: the loss of a policy that picks uniformly among the labels in the
  prompt;
- **what it writes** greedily and sampled (temperature 1): right, first edge listed, every edge
  listed, every edge but the last listed, ends at the target.

The module knows nothing about training; it reads a model directory.
"""

from __future__ import annotations

import argparse
import math
import random
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from bon_server.tasks import get_task
from bon_server.tasks.base import EVAL_SEED, answer_line, completion_steps
from bon_server.tasks.paths import parse_edge, parse_path
from verifier_training.cli import command_parser
from verifier_training.research import RESEARCH
from verifier_training.train.tokenizer import is_label_token


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = command_parser("probe-lookups", __doc__, entry=RESEARCH)
    p.add_argument("--model", required=True, help="a paths policy directory")
    p.add_argument("--problems", type=int, default=300,
                   help="held-out problems for the loss table")
    p.add_argument("--generate", type=int, default=100,
                   help="held-out problems to generate for (greedy and sampled; 0: none)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    return p.parse_args(argv)


def answer_positions(problem: Any, tokens: Sequence[str]) -> list[str | None]:
    """The kind of each token of a reference answer: ``first``, ``middle``, ``last`` (the node
    a step reaches), ``answer line`` (a label in the answer line), or None (anything else)."""
    edges = len(problem.path) - 1
    kinds: list[str | None] = []
    line = 0
    for t in tokens:
        if not is_label_token(t):
            kinds.append(None)
        elif line >= edges:
            kinds.append("answer line")
        elif t.endswith(">"):
            kinds.append(None)  # a step's source: the node just reached, copied
        else:
            kinds.append("first" if line == 0 else "last" if line == edges - 1 else "middle")
        line += t == "\n"
    return kinds


def uniform_copy_loss(problem: Any) -> float:
    """Nats of a policy that picks uniformly among the prompt's distinct labels."""
    return math.log(len(problem.labels))


def write_stats(problem: Any, text: str) -> dict[str, bool]:
    edges = set(problem.edges)
    listed = [parse_edge(step) in edges for step in completion_steps(text)]
    found = answer_line(text)
    nodes = parse_path(found) if found is not None else None
    return {
        "right": get_task("paths").check(problem, text),
        "first edge listed": bool(listed) and listed[0],
        "every edge listed": bool(listed) and all(listed),
        "every edge but the last listed": bool(listed) and all(listed[:-1]),
        "ends at the target": nodes is not None and nodes[-1] == problem.target,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    task = get_task("paths")
    problems = task.problems(max(args.problems, args.generate), EVAL_SEED)

    def prompt_ids(problem: Any) -> list[int]:
        text = tokenizer.apply_chat_template([{"role": "user", "content": problem.question}],
                                             tokenize=False, add_generation_prompt=True)
        return tokenizer.encode(text, add_special_tokens=False)

    losses: dict[str, list[float]] = defaultdict(list)
    for problem in problems[: args.problems]:
        context = prompt_ids(problem)
        answer = tokenizer.encode(task.reference(problem) + tokenizer.eos_token,
                                  add_special_tokens=False)
        with torch.no_grad():
            logp = model(torch.tensor([context + answer])).logits[0].log_softmax(-1)
        kinds = answer_positions(problem, tokenizer.convert_ids_to_tokens(answer))
        for j, kind in enumerate(kinds):
            if kind is not None:
                losses[kind].append(-logp[len(context) + j - 1, answer[j]].item())
        losses["uniform copy"].append(uniform_copy_loss(problem))
    print(f"teacher-forced loss per answer position, nats ({args.problems} held-out problems)")
    for kind in ("first", "middle", "last", "answer line", "uniform copy"):
        values = losses[kind]
        print(f"  {kind:14s} {sum(values) / max(1, len(values)):7.3f}   ({len(values)} tokens)")

    if args.generate:
        torch.manual_seed(args.seed)
        random.seed(args.seed)
        print(f"\nwhat it writes ({args.generate} held-out problems)")
        header = None
        for sample in (False, True):
            counts: dict[str, int] = defaultdict(int)
            for problem in problems[: args.generate]:
                x = torch.tensor([prompt_ids(problem)])
                extra = {"temperature": 1.0, "top_k": 0} if sample else {}
                with torch.no_grad():
                    out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=64,
                                         do_sample=sample, **extra)
                text = tokenizer.decode(out[0, x.shape[1]:], skip_special_tokens=True)
                for k, v in write_stats(problem, text).items():
                    counts[k] += v
            if header is None:
                header = list(counts)
                print("  " + " | ".join(["how", *header]))
            row = ["sampled" if sample else "greedy", *(str(counts[k]) for k in header)]
            print("  " + " | ".join(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
