"""Runs the grid: for every (best_of, concurrency) cell, every endpoint in turn under the
same load, its /metrics scraped before and after, then one report per cell.

Endpoints take turns inside a cell (never overlapping), so each sees the same machine.
Every loop is bounded: ``requests`` per cell, a deadline per request and per cell.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
from tqdm import tqdm

from .client import Endpoint, RequestResult, RequestSpec, resolve, scrape, send
from .datasets import Item
from .html_report import write_html
from .report import cell_report, write_summary
from .stats import arrival_times


@dataclass(frozen=True, slots=True)
class RunConfig:
    endpoints: tuple[Endpoint, ...]
    best_of: tuple[int, ...]
    concurrency: tuple[int, ...]
    rate: float
    requests: int
    dataset: str
    out: Path
    selector: str | None = None
    max_tokens: int = 128
    temperature: float = 1.0
    seed: int = 0
    request_timeout_s: float = 300.0
    cell_timeout_s: float = 1800.0
    warmup: int = 1  # unrecorded requests per endpoint and best_of before the grid
    progress: bool = True
    plots: bool = True


async def run_cell(
    client: httpx.AsyncClient,
    endpoint: Endpoint,
    items: Sequence[Item],
    spec: RequestSpec,
    concurrency: int,
    rate: float,
    *,
    seed: int,
    request_timeout_s: float,
    cell_timeout_s: float,
    bar: tqdm | None = None,
) -> tuple[list[RequestResult], float]:
    """All ``items`` against one endpoint: arrivals on the schedule, at most ``concurrency``
    in flight. Returns the results in item order and the duration (first send -> last end)."""
    schedule = arrival_times(len(items), rate, seed)
    gate = asyncio.Semaphore(concurrency)
    start = time.perf_counter()

    async def one(i: int, item: Item) -> RequestResult:
        await asyncio.sleep(max(0.0, start + schedule[i] - time.perf_counter()))
        async with gate:
            result = await send(client, endpoint, item, spec, request_timeout_s)
        if bar is not None:
            bar.update(1)
        return result

    tasks = [asyncio.ensure_future(one(i, item)) for i, item in enumerate(items)]
    _, pending = await asyncio.wait(tasks, timeout=cell_timeout_s)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    duration = time.perf_counter() - start
    results = []
    for task in tasks:
        if task.cancelled():
            results.append(RequestResult(failure="timeout", error="cell deadline"))
        else:
            results.append(task.result())
    return results, duration


async def run(config: RunConfig, items: Sequence[Item]) -> list[dict]:
    """The whole grid; writes ``cells/*.json``, ``summary.csv``, the plots and
    ``report.html`` (table and plots in one page) under ``out``."""
    out = config.out
    (out / "cells").mkdir(parents=True, exist_ok=True)
    limits = httpx.Limits(max_connections=max(config.concurrency) + 4)
    timeout = httpx.Timeout(config.request_timeout_s, connect=30.0)
    reports: list[dict] = []
    async with httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False) as client:
        endpoints = [await resolve(client, e, 60.0) for e in config.endpoints]
        settings = _config_json(config, endpoints)
        _write_json(out / "config.json", settings)
        await warm_up(client, endpoints, items, config)
        cells = [(b, c, e) for b in config.best_of for c in config.concurrency for e in endpoints]
        bar = tqdm(
            total=len(cells) * config.requests,
            unit="req",
            disable=not config.progress,
            dynamic_ncols=True,
        )
        with bar:
            for best_of, concurrency, endpoint in cells:
                bar.set_description(f"{endpoint.name} best_of={best_of} c={concurrency}")
                spec = RequestSpec(best_of, config.max_tokens, config.temperature, config.selector)
                before = await scrape(client, endpoint)
                results, duration = await run_cell(
                    client,
                    endpoint,
                    items,
                    spec,
                    concurrency,
                    config.rate,
                    seed=config.seed,
                    request_timeout_s=config.request_timeout_s,
                    cell_timeout_s=config.cell_timeout_s,
                    bar=bar,
                )
                after = await scrape(client, endpoint)
                report = cell_report(
                    endpoint, spec, concurrency, config.rate, results, duration, before, after
                )
                _write_json(
                    out / "cells" / cell_filename(endpoint.name, best_of, concurrency), report
                )
                reports.append(report)
    write_summary(out / "summary.csv", reports)
    plots: list[Path] = []
    if config.plots:
        from .plots import plot_all

        plots = plot_all(reports, out / "plots")
    write_html(out / "report.html", reports, settings, plots)
    return reports


async def warm_up(
    client: httpx.AsyncClient,
    endpoints: Sequence[Endpoint],
    items: Sequence[Item],
    config: RunConfig,
) -> None:
    """A few unrecorded requests per endpoint and best_of: the first batch of a new shape
    pays for compilation and allocation, which is not what a cell should measure."""
    for endpoint in endpoints:
        for best_of in config.best_of:
            spec = RequestSpec(best_of, config.max_tokens, config.temperature, config.selector)
            for item in items[: config.warmup]:
                await send(client, endpoint, item, spec, config.request_timeout_s)


def cell_filename(endpoint: str, best_of: int, concurrency: int) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in endpoint)
    return f"{safe}_bo{best_of}_c{concurrency}.json"


def _config_json(config: RunConfig, endpoints: Sequence[Endpoint]) -> dict:
    data = asdict(config)
    data["out"] = str(config.out)
    data["rate"] = "inf" if config.rate == float("inf") else config.rate
    data["endpoints"] = [
        {"name": e.name, "base_url": e.base_url, "kind": e.kind, "model": e.model}
        for e in endpoints
    ]  # never the API key
    return data


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
