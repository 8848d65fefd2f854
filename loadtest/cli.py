"""``python -m loadtest run ...`` (the load tester) and ``python -m loadtest bench ...``
(the server against the bare engine)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import httpx

from bon_server.tasks.args import add_task_args

from .client import Endpoint, parse_compare
from .report import TABLE, table_cells


def int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"want comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"want integers >= 1, got {text!r}")
    return values


def rate_arg(text: str) -> float:
    from .stats import parse_rate

    try:
        return parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="load-test endpoints over a best_of x concurrency grid")
    run.add_argument(
        "--base-url", required=True, help="the Best-of-N server, e.g. http://127.0.0.1:8000"
    )
    run.add_argument("--name", default="bon", help="label of --base-url in reports and plots")
    run.add_argument(
        "--api-key",
        default=os.environ.get("LOADTEST_API_KEY"),
        help="bearer token for every endpoint (default: $LOADTEST_API_KEY)",
    )
    run.add_argument(
        "--model", default=None, help="model to ask for (default: first of /v1/models)"
    )
    run.add_argument(
        "--best-of", type=int_list, default=(1, 4, 16), help="comma-separated best_of values"
    )
    run.add_argument(
        "--concurrency",
        type=int_list,
        default=(1, 4, 16),
        help="comma-separated limits on requests in flight",
    )
    run.add_argument(
        "--rate",
        type=rate_arg,
        default=float("inf"),
        help="'inf' (as fast as concurrency allows) or 'poisson:R' (R req/s, seeded)",
    )
    run.add_argument("--requests", type=int, default=64, help="requests per cell and endpoint")
    # --task WORLD, or --dataset: a world's name, a dataset file (as the training tools read
    # it, with the same flags), or a JSONL file of {messages|prompt, answer|task}; neither: the
    # world --base-url serves (its /v1/bon/problem), arith when it does not say
    add_task_args(run, worlds_in_dataset=True)
    run.add_argument(
        "--selector", default=None, help="selector for Best-of-N endpoints (default: the server's)"
    )
    run.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="another endpoint under the same load; NAME=plain:URL for a plain "
        "OpenAI server asked for n=best_of, NAME=bon:URL for a Best-of-N one "
        "(probed when not said); repeatable",
    )
    run.add_argument(
        "--adaptive",
        action="store_true",
        help="also run every cell with adaptive=true (best_of as the cap), as the endpoint "
        "NAME+adaptive beside NAME: fixed N and adaptive side by side",
    )
    run.add_argument(
        "--prune",
        action="store_true",
        help="also run every cell with prune=true (the server needs a verifier), as NAME+prune",
    )
    run.add_argument("--max-tokens", type=int, default=128, help="max_tokens per request")
    run.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    run.add_argument(
        "--seed", type=int, default=0, help="seed of the dataset draw and the arrivals"
    )
    run.add_argument("--request-timeout", type=float, default=300.0, help="seconds per request")
    run.add_argument(
        "--cell-timeout", type=float, default=1800.0, help="seconds per cell and endpoint"
    )
    run.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="unrecorded requests per endpoint and best_of before the grid",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    run.add_argument("--out", type=Path, required=True, help="output directory")

    bench = sub.add_parser("bench", help="the server against the bare engine (starts both)")
    from .bench import add_arguments

    add_arguments(bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "bench":
        from .bench import main as bench_main

        return bench_main(args)
    return run_command(args)


def served_world(base_url: str, api_key: str | None) -> str | None:
    """The world a Best-of-N server says it serves (``GET /v1/bon/problem``), or None."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = httpx.get(f"{base_url}/v1/bon/problem", params={"seed": 0}, headers=headers,
                      timeout=30)
        return r.json().get("world") if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError, AttributeError):
        return None


def run_command(args: argparse.Namespace) -> int:
    from bon_server.tasks.args import task_from_args

    from .datasets import load_dataset, own_form, task_items
    from .runner import RunConfig, run

    if args.requests < 1:
        raise SystemExit("--requests must be >= 1")
    endpoints = [Endpoint(args.name, args.base_url.rstrip("/"), "auto", args.model, args.api_key)]
    if args.task is not None:
        args.dataset = args.task
    if args.dataset is None:
        args.dataset = served_world(endpoints[0].base_url, args.api_key) or "arith"
    try:
        endpoints += [parse_compare(spec, args.api_key) for spec in args.compare]
        if os.path.exists(args.dataset) and not own_form(args.dataset):
            items = task_items(task_from_args(args), args.requests)
        else:
            items = load_dataset(args.dataset, args.requests, args.seed)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    endpoints = [Endpoint(e.name, e.base_url, e.kind, args.model, e.api_key) for e in endpoints]
    main = endpoints[0]
    for flag, field in ((args.prune, "prune"), (args.adaptive, "adaptive")):
        if flag:  # the same server under the same load, drawing its candidates another way
            endpoints.insert(1, Endpoint(
                f"{main.name}+{field}", main.base_url, "bon", main.model, main.api_key,
                ((field, True),),
            ))
    names = [e.name for e in endpoints]
    if len(set(names)) != len(names):
        raise SystemExit(f"endpoint names must differ, got {names}")
    config = RunConfig(
        endpoints=tuple(endpoints),
        best_of=args.best_of,
        concurrency=args.concurrency,
        rate=args.rate,
        requests=args.requests,
        dataset=args.dataset,
        out=args.out,
        selector=args.selector,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        seed=args.seed,
        request_timeout_s=args.request_timeout,
        cell_timeout_s=args.cell_timeout,
        warmup=max(0, args.warmup),
        progress=not args.no_progress,
        plots=not args.no_plots,
    )
    try:
        reports = asyncio.run(run(config, items))
    except httpx.HTTPError as exc:  # probing an endpoint failed: nothing was measured
        raise SystemExit(f"loadtest: {type(exc).__name__}: {exc}") from None
    print_table(reports, sys.stdout)
    print(
        f"wrote {args.out}/cells/*.json, {args.out}/summary.csv"
        + ("" if args.no_plots else f", {args.out}/plots/*.png")
        + f", {args.out}/report.html"
    )
    return 0 if all(r["failed"] == 0 for r in reports) else 1


def print_table(reports: Sequence[dict], stream: TextIO) -> None:
    """One line per cell: what N costs (latency, tokens) and what it buys (accuracy)."""
    print(" ".join(f"{name:{align}{width}}" for name, width, align, _ in TABLE), file=stream)
    for r in reports:
        cells = table_cells(r)
        line = " ".join(
            f"{cell[:width] if name == 'endpoint' else cell:{align}{width}}"
            for (name, width, align, _), cell in zip(TABLE, cells, strict=True)
        )
        print(line, file=stream)
