"""The server against the bare engine, side by side in one run on the embedded policy.

The floor is an in-process vLLM ``AsyncLLM`` built exactly as the server builds its own
(``VLLMGenerator.from_settings``), asked for ``SamplingParams(n=N, output_kind=FINAL_ONLY)``
with no HTTP and no scoring. The server is ``python -m bon_server serve`` in a subprocess
(no verifier, ``selector=majority``: the floor has no scorer to match), driven by this
package's streaming client. Both get the same prompts with the same per-request seeds,
so both sample the same tokens (the table shows the totals).

Measurements alternate between the two (never overlap: 2 cores):
  (a) end-to-end latency of best_of=16 at concurrency 1, server / floor (target <= 1.10);
  (b) request throughput at concurrency 16 and best_of=16, server / floor (target >= 0.90);
  (c) p50 latency from best_of=1 to best_of=16, for both.
With ``--verifier`` (or an embedded verifier when one ships), (a) is repeated with the
verifier selector and the scorer's share of the request time read from /metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from .client import Endpoint, RequestSpec, resolve, scrape, send
from .datasets import Item, arith_items
from .report import server_metrics
from .sides import Floor, Server

LATENCY_TARGET, THROUGHPUT_TARGET = 1.10, 0.90
EMBEDDED_VERIFIERS = ("arith-prm", "arith-orm")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="directory for bench.json and bench.md")
    p.add_argument(
        "--model", default=None, help="policy for both sides (default: the embedded arith-policy)"
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
        help="verifier directory for the optional scorer run (default: an embedded "
        "arith-prm / arith-orm if one exists; 'none' to skip)",
    )
    p.add_argument(
        "--verifier-kind",
        default=None,
        choices=("orm", "prm"),
        help="kind of --verifier (default: prm for arith-prm, else orm)",
    )
    p.add_argument(
        "--startup-timeout", type=float, default=300.0, help="seconds to wait for servers"
    )


# ------------------------------------------------------------------ measuring


@dataclass
class Side:
    latencies: list[float]
    tokens: int = 0
    duration: float = 0.0
    completed: int = 0
    failed: int = 0

    def p(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")

    @property
    def throughput(self) -> float:
        return self.completed / self.duration if self.duration else float("nan")


async def _server_cell(
    client: httpx.AsyncClient,
    endpoint: Endpoint,
    items: Sequence[Item],
    spec_kw: dict,
    concurrency: int,
    seeds: Sequence[int],
) -> Side:
    side = Side([])
    # like runner.run_cell, but with a seed per request (the floor gets the same seeds)
    gate = asyncio.Semaphore(concurrency)

    async def one(item: Item, seed: int):  # type: ignore[no-untyped-def]
        async with gate:
            return await send(client, endpoint, item, RequestSpec(seed=seed, **spec_kw), 300.0)

    start = time.perf_counter()
    results = await asyncio.gather(*(one(i, s) for i, s in zip(items, seeds, strict=True)))
    side.duration = time.perf_counter() - start
    for r in results:
        _add(side, r)
    return side


def _add(side: Side, r: Any) -> None:
    if r.ok and r.e2el is not None:
        side.latencies.append(r.e2el)
        side.tokens += r.output_tokens or 0
        side.completed += 1
    else:
        side.failed += 1


def _spec_kw(args: Any, best_of: int, selector: str | None) -> dict:
    """The server side's RequestSpec fields (the seed is added per request)."""
    return dict(best_of=best_of, max_tokens=args.max_tokens, temperature=args.temperature,
                selector=selector, return_candidates=False)


async def _interleaved_latency(
    client, endpoint, floor: Floor, items, n, args, selector: str | None
) -> tuple[Side, Side]:
    """Concurrency 1, one request at a time, alternating which side goes first."""
    server, bare = Side([]), Side([])
    spec_kw = _spec_kw(args, n, selector)
    for i, item in enumerate(items):
        order = ("floor", "server") if i % 2 == 0 else ("server", "floor")
        for who in order:
            if who == "floor":
                elapsed, tokens = await floor.one(item, n, args.max_tokens, args.temperature, i)
                bare.latencies.append(elapsed)
                bare.tokens += tokens
                bare.completed += 1
            else:
                r = await send(client, endpoint, item, RequestSpec(seed=i, **spec_kw), 300.0)
                _add(server, r)
    return server, bare


async def measure(args: argparse.Namespace, out: Path) -> dict:
    n = args.best_of
    lat_items = arith_items(args.latency_requests, seed=1)
    tp_items = arith_items(args.throughput_requests, seed=2)
    results: dict[str, Any] = {
        "config": {k: str(v) for k, v in vars(args).items() if k not in ("func",)}
    }
    t0 = time.perf_counter()
    server = Server(
        [*_model_flag(args), "--default-selector", "majority", "--keepalive-interval-s", "2"],
        out / "server.log",
    )
    floor = None
    try:
        # One after the other: two engines compiling at once on 2 cores share (and can
        # corrupt) vLLM's compile cache, and the later one would be slowed anyway.
        await server.wait_ready(args.startup_timeout)
        floor = Floor.start(args.model)
        results["startup_s"] = time.perf_counter() - t0
        limits = httpx.Limits(max_connections=args.concurrency + 4)
        async with httpx.AsyncClient(
            limits=limits, timeout=httpx.Timeout(300.0), trust_env=False
        ) as client:
            endpoint = await resolve(client, Endpoint("bon", server.base_url, "bon"), 60.0)
            warm = arith_items(4, seed=99)
            await _interleaved_latency(client, endpoint, floor, warm, n, args, "majority")
            await _interleaved_latency(client, endpoint, floor, warm[:2], 1, args, "majority")
            # and one batch at the throughput concurrency on each side (new batch shapes)
            burst = arith_items(args.concurrency, seed=98)
            burst_seeds = list(range(len(burst)))
            await floor.cell(
                burst, n, args.concurrency, args.max_tokens, args.temperature, burst_seeds
            )
            # one request shape for the warm-up burst and the throughput rounds
            spec_kw = _spec_kw(args, n, "majority")
            await _server_cell(client, endpoint, burst, spec_kw, args.concurrency, burst_seeds)
            _progress("warm-up done")

            s16, f16 = await _interleaved_latency(
                client, endpoint, floor, lat_items, n, args, "majority"
            )
            _progress(
                f"(a) best_of={n}: server p50 {s16.p(50) * 1e3:.0f} ms, "
                f"floor p50 {f16.p(50) * 1e3:.0f} ms"
            )
            s1, f1 = await _interleaved_latency(
                client, endpoint, floor, lat_items, 1, args, "majority"
            )
            _progress(
                f"(c) best_of=1: server p50 {s1.p(50) * 1e3:.0f} ms, "
                f"floor p50 {f1.p(50) * 1e3:.0f} ms"
            )

            seeds = list(range(1000, 1000 + len(tp_items)))
            tp_server, tp_floor = Side([]), Side([])
            before = await scrape(client, endpoint)
            for round_ in range(args.rounds):
                order = ("floor", "server") if round_ % 2 == 0 else ("server", "floor")
                for who in order:
                    if who == "floor":
                        lats, tokens, dur = await floor.cell(
                            tp_items, n, args.concurrency, args.max_tokens, args.temperature, seeds
                        )
                        _merge(tp_floor, Side(lats, tokens, dur, len(lats)))
                    else:
                        side = await _server_cell(
                            client, endpoint, tp_items, spec_kw, args.concurrency, seeds
                        )
                        _merge(tp_server, side)
                _progress(
                    f"(b) round {round_ + 1}: server {tp_server.throughput:.2f} req/s, "
                    f"floor {tp_floor.throughput:.2f} req/s"
                )
            after = await scrape(client, endpoint)
            results["server_metrics_throughput"] = server_metrics(before, after)
        server.stop()

        results["verifier"] = await _verifier_run(args, out, floor, lat_items)
    finally:
        server.stop()
        if floor is not None:
            floor.shutdown()
    results |= _summary(n, args.concurrency, s16, f16, s1, f1, tp_server, tp_floor)
    results["wall_s"] = time.perf_counter() - t0
    return results


def _model_flag(args: argparse.Namespace) -> list[str]:
    return ["--model", args.model] if args.model else []


def _merge(total: Side, part: Side) -> None:
    total.latencies += part.latencies
    total.tokens += part.tokens
    total.duration += part.duration
    total.completed += part.completed
    total.failed += part.failed


def _find_verifier(args: argparse.Namespace) -> tuple[str, str] | None:
    if args.verifier == "none":
        return None
    if args.verifier:
        kind = args.verifier_kind or ("prm" if "prm" in Path(args.verifier).name else "orm")
        return args.verifier, kind
    from bon_server.config import EMBEDDED_DIR

    for name in EMBEDDED_VERIFIERS:
        if (EMBEDDED_DIR / name / "config.json").is_file():
            return str(EMBEDDED_DIR / name), "prm" if name.endswith("prm") else "orm"
    return None


async def _verifier_run(args, out: Path, floor: Floor, items: Sequence[Item]) -> dict:
    found = _find_verifier(args)
    if found is None:
        return {"available": False}
    path, kind = found
    server = Server(
        [
            *_model_flag(args),
            "--verifier",
            path,
            "--verifier-kind",
            kind,
            "--keepalive-interval-s",
            "2",
        ],
        out / "server-verifier.log",
    )
    try:
        await server.wait_ready(args.startup_timeout)
        async with httpx.AsyncClient(timeout=httpx.Timeout(300.0), trust_env=False) as client:
            endpoint = await resolve(client, Endpoint("bon+verifier", server.base_url, "bon"), 60.0)
            await _interleaved_latency(
                client, endpoint, floor, items[:2], args.best_of, args, "verifier"
            )
            before = await scrape(client, endpoint)
            s, f = await _interleaved_latency(
                client, endpoint, floor, items, args.best_of, args, "verifier"
            )
            after = await scrape(client, endpoint)
    finally:
        server.stop()
    metrics = server_metrics(before, after)
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


def _summary(n, concurrency, s16, f16, s1, f1, tp_s, tp_f) -> dict:
    return {
        "a_latency": {
            "server_p50_ms": s16.p(50) * 1e3,
            "floor_p50_ms": f16.p(50) * 1e3,
            "server_mean_ms": float(np.mean(s16.latencies)) * 1e3 if s16.latencies else None,
            "floor_mean_ms": float(np.mean(f16.latencies)) * 1e3,
            "server_p99_ms": s16.p(99) * 1e3,
            "floor_p99_ms": f16.p(99) * 1e3,
            "ratio_p50": s16.p(50) / f16.p(50),
            "ratio_mean": float(np.mean(s16.latencies) / np.mean(f16.latencies))
            if s16.latencies
            else None,
            "server_tokens": s16.tokens,
            "floor_tokens": f16.tokens,
            "requests": len(f16.latencies),
            "failed": s16.failed,
            "target_max": LATENCY_TARGET,
        },
        "b_throughput": {
            "server_req_s": tp_s.throughput,
            "floor_req_s": tp_f.throughput,
            "ratio": tp_s.throughput / tp_f.throughput,
            "server_tokens": tp_s.tokens,
            "floor_tokens": tp_f.tokens,
            "server_output_tok_s": tp_s.tokens / tp_s.duration if tp_s.duration else None,
            "floor_output_tok_s": tp_f.tokens / tp_f.duration if tp_f.duration else None,
            "requests": tp_f.completed,
            "failed": tp_s.failed,
            "concurrency": concurrency,
            "target_min": THROUGHPUT_TARGET,
        },
        "c_scaling": {
            "server_p50_bo1_ms": s1.p(50) * 1e3,
            "floor_p50_bo1_ms": f1.p(50) * 1e3,
            "server_p50_boN_ms": s16.p(50) * 1e3,
            "floor_p50_boN_ms": f16.p(50) * 1e3,
            "server_scaling": s16.p(50) / s1.p(50),
            "floor_scaling": f16.p(50) / f1.p(50),
            "server_tokens_bo1": s1.tokens,
            "floor_tokens_bo1": f1.tokens,
            "best_of": n,
        },
    }


def table(r: dict) -> str:
    a, b, c = r["a_latency"], r["b_throughput"], r["c_scaling"]
    n = c["best_of"]
    ok_a = "met" if a["ratio_p50"] <= LATENCY_TARGET else "MISSED"
    ok_b = "met" if b["ratio"] >= THROUGHPUT_TARGET else "MISSED"
    rows = [
        ("measure", "server", "floor (engine)", "server/floor", "target"),
        (
            f"(a) p50 e2el, best_of={n}, c=1 (ms)",
            f"{a['server_p50_ms']:.0f}",
            f"{a['floor_p50_ms']:.0f}",
            f"{a['ratio_p50']:.3f}x",
            f"<= {LATENCY_TARGET:.2f}x {ok_a}",
        ),
        (
            f"(a) mean e2el, best_of={n}, c=1 (ms)",
            f"{a['server_mean_ms']:.0f}",
            f"{a['floor_mean_ms']:.0f}",
            f"{a['ratio_mean']:.3f}x",
            "",
        ),
        (
            f"(a) completion tokens ({a['requests']} req)",
            str(a["server_tokens"]),
            str(a["floor_tokens"]),
            "",
            "same work",
        ),
        (
            f"(b) req/s, best_of={n}, c={b['concurrency']}",
            f"{b['server_req_s']:.2f}",
            f"{b['floor_req_s']:.2f}",
            f"{b['ratio']:.3f}x",
            f">= {THROUGHPUT_TARGET:.2f}x {ok_b}",
        ),
        (
            f"(b) output tok/s, c={b['concurrency']}",
            f"{b['server_output_tok_s']:.0f}",
            f"{b['floor_output_tok_s']:.0f}",
            "",
            "",
        ),
        (
            "(c) p50 e2el, best_of=1, c=1 (ms)",
            f"{c['server_p50_bo1_ms']:.0f}",
            f"{c['floor_p50_bo1_ms']:.0f}",
            f"{c['server_p50_bo1_ms'] / c['floor_p50_bo1_ms']:.3f}x",
            "",
        ),
        (
            f"(c) p50 scaling best_of 1 -> {n}",
            f"{c['server_scaling']:.2f}x",
            f"{c['floor_scaling']:.2f}x",
            "",
            "",
        ),
    ]
    v = r.get("verifier", {})
    if v.get("available"):
        rows.append(
            (
                f"verifier ({v['kind']}) p50 e2el, best_of={n} (ms)",
                f"{v['server_p50_e2el_ms']:.0f}",
                f"{v['floor_p50_e2el_ms']:.0f}",
                f"{v['latency_ratio_p50']:.3f}x",
                "",
            )
        )
        share = v.get("scoring_share")
        rows.append(
            (
                "verifier: scorer's share of request time",
                f"{share:.1%}" if share is not None else "-",
                "",
                "",
                "",
            )
        )
    else:
        rows.append(("verifier run", "no verifier available", "", "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
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
