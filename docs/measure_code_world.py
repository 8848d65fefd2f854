"""The code world's table: how to pick among a policy's sampled programs.

    .venv/bin/python docs/measure_code_world.py --problems 50 -k 64 --out runs/code/table

samples ``k`` programs for each of ``--problems`` held-out code-world problems with
``verifier_training sample`` (unless ``--records`` gives them), then runs every distinct
program in the sandbox twice: against the prompt's VISIBLE examples (what a server can run:
the tests a client would send) and on the HIDDEN inputs with its outputs printed (what it
does, for a vote by behaviour). A record's ``correct`` is the world's checker: every hidden
test passes. Then, at N = 1, 2, 4, ..., k, averaged over ``--draws`` random subsets of N of a
problem's k samples:

    pass@1           a random sample is right
    majority         the most common behaviour (outputs on the hidden inputs) wins
    visible tests    most visible examples passed; ties by majority
    hidden tests     most hidden tests passed (a right program whenever one exists: the oracle
                     by construction, since right means passing them all)
    oracle           any of the N is right

and prints one markdown table, with the date, the commit and the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime
import json
import platform
import random
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bon_server.sandbox import Limits, extract_program, run_tests  # noqa: E402
from bon_server.tasks import get_task  # noqa: E402
from bon_server.tasks.code import HIDDEN_INPUTS, passes  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", default=str(ROOT / "bon_server/embedded/code-policy"),
                   help="the policy to sample")
    p.add_argument("--problems", type=int, default=50, help="held-out problems")
    p.add_argument("-k", type=int, default=64, help="samples a problem (the largest N)")
    p.add_argument("--records", help="sampled records (JSONL) to use instead of sampling")
    p.add_argument("--out", default="runs/code/table", help="directory for records and table")
    p.add_argument("--draws", type=int, default=20, help="random subsets a problem and N")
    p.add_argument("--concurrency", type=int, default=2, help="sandbox runs at once")
    p.add_argument("--seed", type=int, default=0, help="seed of the subsets")
    return p.parse_args()


def sample(args: argparse.Namespace, out: Path) -> Path:
    records = out / "samples.jsonl"
    cmd = [sys.executable, "-m", "verifier_training", "sample", "--task", "code",
           "--policy", args.policy, "--problems", str(args.problems), "-k", str(args.k),
           "--seed", "1234", "--out", str(records), "--no-progress"]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    return records


async def behaviour(programs: list[tuple[str, list[str], list[str]]], concurrency: int
                    ) -> list[tuple[float, str]]:
    """For each (program, visible tests, hidden calls): the share of visible tests passed,
    and the program's outputs on the hidden inputs (its behaviour, as a vote key)."""
    gate = asyncio.Semaphore(concurrency)
    limits = Limits(wall_s=5.0, cpu_s=5.0)

    async def one(program: str, visible: list[str], calls: list[str]) -> tuple[float, str]:
        async with gate:
            seen = await run_tests(program, visible, limits)
            shown = await run_tests(program, [f"print(repr({c}))" for c in calls], limits)
        outputs = shown.stdout if shown.passed == shown.total else f"error {shown.first_error}"
        return seen.fraction, outputs

    return list(await asyncio.gather(*(one(*p) for p in programs)))


def pick(group: list[dict], rule: str, rng: random.Random) -> dict:
    votes = collections.Counter(r["outputs"] for r in group)
    if rule == "majority":
        key = lambda r: (votes[r["outputs"]], rng.random())  # noqa: E731
    elif rule == "visible tests":
        key = lambda r: (r["visible"], votes[r["outputs"]], rng.random())  # noqa: E731
    else:  # hidden tests: right programs pass them all
        key = lambda r: (r["correct"], votes[r["outputs"]], rng.random())  # noqa: E731
    return max(group, key=key)


def main() -> None:
    args = parse_args()
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    path = Path(args.records) if args.records else sample(args, out)
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    task = get_task("code")
    problems = {q: task.parse(q) for q in {r["question"] for r in records}}
    distinct: dict[tuple[str, str], tuple[str, list[str], list[str]]] = {}
    for r in records:
        problem = problems[r["question"]]
        program = extract_program(r["completion"])
        calls = [f"{problem.name}({', '.join(map(str, a))})" for a in HIDDEN_INPUTS[problem.arity]]
        distinct[(r["question"], program)] = (program, problem.visible_tests, calls)
    keys = list(distinct)
    print(f"{len(records)} samples, {len(keys)} distinct programs to run", flush=True)
    results = dict(zip(keys, asyncio.run(behaviour([distinct[k] for k in keys],
                                                   args.concurrency)), strict=True))
    # by problem id: the held-out stream may ask one question twice (two problems, each k)
    by_problem: dict[str, list[dict]] = collections.defaultdict(list)
    for r in records:
        visible, outputs = results[(r["question"], extract_program(r["completion"]))]
        by_problem[r["problem_id"]].append(
            {"correct": bool(r["correct"]), "visible": visible, "outputs": outputs})
    # what separates the visible tests from the hidden ones: programs passing every visible
    # example that fail a hidden test (the examples pin the function down within the world's
    # grammar, so only a program outside it can)
    false_passes = sum(1 for question, program in keys if results[question, program][0] == 1.0
                       and not passes(program, problems[question].hidden_tests))
    passing = sum(1 for k in keys if results[k][0] == 1.0)
    rng = random.Random(args.seed)
    sizes = [n for n in (1, 2, 4, 8, 16, 32, 64, 128) if n <= args.k]
    rules = ("pass@1", "majority", "visible tests", "hidden tests", "oracle")
    table = {rule: [] for rule in rules}
    for n in sizes:
        acc = collections.Counter()
        count = 0
        for group in by_problem.values():
            for _ in range(args.draws if n < len(group) else 1):
                chosen = rng.sample(group, n)
                count += 1
                acc["pass@1"] += sum(r["correct"] for r in chosen) / n
                acc["oracle"] += any(r["correct"] for r in chosen)
                for rule in ("majority", "visible tests", "hidden tests"):
                    acc[rule] += pick(chosen, rule, rng)["correct"]
        for rule in rules:
            table[rule].append(acc[rule] / count)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=ROOT).stdout.strip()
    lines = [
        f"{datetime.date.today()}, commit {commit}, {platform.processor() or platform.machine()}"
        f", {len(by_problem)} held-out problems x {args.k} samples of {args.policy}",
        f"{len(keys)} distinct programs, {passing} pass every visible example, "
        f"{false_passes} of them fail a hidden test",
        "",
        "| rule | " + " | ".join(f"N={n}" for n in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    lines += [f"| {rule} | " + " | ".join(f"{v:.3f}" for v in table[rule]) + " |"
              for rule in rules]
    text = "\n".join(lines)
    (out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
