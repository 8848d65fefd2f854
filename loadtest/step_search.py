"""Step search against Best-of-N on held-out problems: accuracy, tokens and time per method.

One bon-server (a policy and a step scorer) is started here, or one already running is given
with ``--base-url``. For each N in ``--best-of`` and each method in ``--methods`` the same
held-out problems (seed ``EVAL_SEED``) are asked one chat request each, seeded (problem i:
``--seed + i``, the same for every method and N), ``selector: verifier``, ``search: <method>``
and ``beam_width`` (also for N = 4: beam then keeps one beam and expands it 4 ways). Each cell
reports the accuracy of the returned choice (the world's checker), the oracle (any returned
candidate right, ``return_candidates``: for best_of_n its N candidates, for the step methods
their finished beams), the mean completion tokens a problem (``usage``: every generated token,
the dropped beams' too), the wall seconds for the set and the mean steps, expansions and
dropped beams (``bon.search``).

With ``--verifier task:<world>`` the scorer is the world's exact step and answer checker: the
upper bound a perfect PRM gives, labelled so in the table. A trained PRM directory is served
with ``--verifier-kind prm`` (the default for a directory here).

    .venv/bin/python -m loadtest.step_search --world countdown --best-of 16 \
        --methods best_of_n,particles,beam --problems 100 --json runs/search/cd-task-16.json

A 4xx/5xx answer is printed with its request and the cell stops there (the other cells go on).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bon_server.tasks import get_task
from bon_server.tasks.base import EVAL_SEED

METHODS = ("best_of_n", "beam", "dvts", "particles")
# every world's reference solutions are under 80 characters (char-level tokens): 128 leaves
# room for a few wrong steps and is the budget the other world benchmarks use
MAX_TOKENS = {"countdown": 128, "arith": 128, "paths": 128}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores of {cpu}, {platform.system()} {platform.release()}"


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True,
                              check=False).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "bon_server", "loadtest")
    return head + (" (+ uncommitted changes in bon_server/ or loadtest/)" if dirty else "")


def scorer_label(verifier: str) -> str:
    if verifier.startswith("task:"):
        return f"{verifier} (exact checker: the perfect-PRM upper bound)"
    if verifier.startswith("py:"):
        return verifier
    return f"PRM {verifier}"


def start_server(args: argparse.Namespace, log: Path) -> Any:
    from .sides import Server

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # the cores are shared
    kind = args.verifier_kind or ("prm" if not args.verifier.startswith(("task:", "py:"))
                                  else None)
    flags = ["--model", args.policy, "--verifier", args.verifier, "--seed", "0"]
    if kind:
        flags += ["--verifier-kind", kind]
    flags += args.server_arg
    server = Server(flags, log)
    try:
        asyncio.run(server.wait_ready(args.startup_timeout))
    except BaseException:
        server.stop()
        raise
    return server


def run_cell(client: httpx.Client, base_url: str, model: str, task: Any, problems: list,
             method: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    """One (method, N) over every problem; stops at the first failed request."""

    def ask(i: int) -> dict[str, Any]:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": problems[i].question}],
            "max_tokens": args.max_tokens,
            "temperature": args.temperature,
            "seed": args.seed + i,
            "best_of": n,
            "selector": "verifier",
            "search": method,
            "return_candidates": args.oracle,
        }
        if method in ("beam", "dvts"):
            body["beam_width"] = args.beam_width
        if method != "best_of_n":
            body["search_max_steps"] = args.search_max_steps
            if method == "particles" and args.search_temperature is not None:
                body["search_temperature"] = args.search_temperature
        r = client.post(f"{base_url}/v1/chat/completions", json=body, timeout=args.timeout)
        if r.status_code != 200:
            return {"error": {"status": r.status_code, "request": body, "response": r.text}}
        out = r.json()
        text = out["choices"][0]["message"]["content"]
        bon = out["bon"]
        search = bon.get("search") or {}
        row = {
            "problem": i,
            "right": task.check(problems[i], text),
            "completion_tokens": out["usage"]["completion_tokens"],
            "steps": search.get("steps"),
            "expanded": search.get("beams_expanded"),
            "dropped": search.get("beams_dropped"),
            "text": text,
        }
        if args.oracle:
            cands = bon.get("candidates") or []
            row["oracle"] = any(task.check(problems[i], c["text"]) for c in cands)
            row["candidates"] = len(cands)
        return row

    rows: list[dict[str, Any]] = []
    error = None
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
        for row in pool.map(ask, range(len(problems))):
            if "error" in row:
                error = row["error"]
                break
            rows.append(row)
    wall = time.perf_counter() - start
    return {"method": method, "best_of": n, "rows": rows, "wall_s": wall, "error": error}


def mean(values: list[Any]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def table_row(cell: dict[str, Any], label: str, oracle: bool) -> str:
    rows = cell["rows"]
    k = len(rows)
    acc = mean([float(r["right"]) for r in rows])
    cov = mean([float(r["oracle"]) for r in rows]) if oracle and rows else None
    parts = [
        cell["method"], str(cell["best_of"]), label, str(k), fmt(acc, ".3f"),
        fmt(cov, ".3f"), fmt(mean([r["completion_tokens"] for r in rows]), ".0f"),
        f"{cell['wall_s']:.1f}", fmt(mean([r["steps"] for r in rows]), ".2f"),
        fmt(mean([r["expanded"] for r in rows]), ".1f"),
        fmt(mean([r["dropped"] for r in rows]), ".1f"),
    ]
    if cell["error"] is not None:
        parts[3] += f" (stopped: HTTP {cell['error']['status']})"
    return "| " + " | ".join(parts) + " |"


HEADER = ("| method | N | scorer | problems | accuracy | oracle (any returned candidate right) "
          "| completion tokens / problem | wall s (set) | steps | expanded | dropped |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--world", default="countdown", choices=sorted(MAX_TOKENS),
                   help="the world whose held-out problems are asked")
    p.add_argument("--policy", default=None,
                   help="policy for the server started here (default: "
                   "bon_server/embedded/<world>-policy)")
    p.add_argument("--verifier", default=None,
                   help="step scorer: task:<world> (default), a PRM directory or py:mod:fn; "
                   "with --base-url only the table's label")
    p.add_argument("--verifier-kind", default=None, choices=("orm", "prm"),
                   help="--verifier-kind for the server (default: prm for a directory)")
    p.add_argument("--base-url", default=None,
                   help="a running bon-server to ask instead of starting one")
    p.add_argument("--best-of", default="4,16,64", help="comma-separated N")
    p.add_argument("--methods", default=",".join(("best_of_n", "beam", "dvts", "particles")),
                   help=f"comma-separated searches, of {', '.join(METHODS)}")
    p.add_argument("--problems", type=int, default=100, help="held-out problems (seed 1234)")
    p.add_argument("--problems-at-64", type=int, default=None,
                   help="fewer problems for N >= 64 (the first ones of the same set)")
    p.add_argument("--beam-width", type=int, default=4, help="beam_width M (beam, dvts)")
    p.add_argument("--search-max-steps", type=int, default=16, help="search_max_steps")
    p.add_argument("--search-temperature", type=float, default=None,
                   help="particles' search_temperature (default: the server's, 0.1)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="max_tokens per request (default: 128 for every world)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--seed", type=int, default=0, help="problem i is asked with seed + i")
    p.add_argument("--concurrency", type=int, default=1, help="requests in flight")
    p.add_argument("--no-oracle", dest="oracle", action="store_false",
                   help="skip return_candidates (the oracle column)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per request")
    p.add_argument("--startup-timeout", type=float, default=600.0,
                   help="seconds to wait for the server started here")
    p.add_argument("--server-arg", action="append", default=[],
                   help="one more flag for the server started here (repeatable)")
    p.add_argument("--log", type=Path, default=Path("runs/search/step_search_server.log"),
                   help="the started server's log")
    p.add_argument("--json", type=Path, default=None,
                   help="write every request's result here (raw output)")
    args = p.parse_args()

    args.policy = args.policy or f"bon_server/embedded/{args.world}-policy"
    args.verifier = args.verifier or f"task:{args.world}"
    args.max_tokens = args.max_tokens or MAX_TOKENS[args.world]
    sizes = [int(x) for x in args.best_of.split(",")]
    methods = args.methods.split(",")
    for m in methods:
        if m not in METHODS:
            p.error(f"unknown method {m!r}; valid: {', '.join(METHODS)}")

    task = get_task(args.world)
    problems = task.problems(args.problems, EVAL_SEED)
    label = scorer_label(args.verifier)
    server = None
    if args.base_url is None:
        args.log.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        server = start_server(args, args.log)
        base_url = server.base_url
        print(f"server up in {time.perf_counter() - t0:.0f} s (log {args.log})", flush=True)
    else:
        base_url = args.base_url.rstrip("/")
    cells: list[dict[str, Any]] = []
    meta = {
        "date": dt.date.today().isoformat(),
        "commit": commit(),
        "machine": machine(),
        "command": " ".join([Path(sys.executable).name, "-m", "loadtest.step_search",
                             *sys.argv[1:]]),
        "world": args.world, "policy": args.policy, "scorer": label,
        "max_tokens": args.max_tokens, "temperature": args.temperature,
        "beam_width": args.beam_width, "concurrency": args.concurrency,
    }
    try:
        with httpx.Client(trust_env=False) as client:
            model = client.get(f"{base_url}/v1/models", timeout=30).json()["data"][0]["id"]
            print(f"date {meta['date']}, commit {meta['commit']}, machine {meta['machine']}")
            print(f"world {args.world}, policy {model}, scorer {label}, max_tokens "
                  f"{args.max_tokens}, temperature {args.temperature}, beam_width "
                  f"{args.beam_width}, concurrency {args.concurrency}, held-out seed "
                  f"{EVAL_SEED}")
            print(HEADER, flush=True)
            for n in sizes:
                count = args.problems_at_64 if (args.problems_at_64 and n >= 64) else None
                subset = problems[:count] if count else problems
                for method in methods:
                    cell = run_cell(client, base_url, model, task, subset, method, n, args)
                    cells.append(cell)
                    print(table_row(cell, label, args.oracle), flush=True)
                    if cell["error"] is not None:
                        print(f"ERROR in {method} N={n}: request "
                              f"{json.dumps(cell['error']['request'])} -> HTTP "
                              f"{cell['error']['status']} {cell['error']['response'][:2000]}",
                              file=sys.stderr, flush=True)
                    if args.json:
                        args.json.parent.mkdir(parents=True, exist_ok=True)
                        args.json.write_text(json.dumps({"meta": meta, "cells": cells}))
    finally:
        if server is not None:
            server.stop()
    print()
    print(f"scorer: {label}")
    print(HEADER)
    for cell in cells:
        print(table_row(cell, label, args.oracle))


if __name__ == "__main__":
    main()
