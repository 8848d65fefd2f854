"""A bounded soak: minutes of mixed load on a real server, then nothing may be left behind.

32 concurrent clients send chat and completions requests with best_of drawn from
1..16, mixed selectors (the tiny ORM scores the verifier ones), streaming and not;
about 10% of requests are abandoned mid-generation by their client and about 5%
are malformed on purpose. The server runs with an admission bound below the
worst-case demand (so requests queue) and a deadline.

At the end: no unexpected status or transport error, ``bon_requests_in_flight``,
``bon_sequences_in_flight`` and the engine's unfinished count all back to 0, and
the server process's resident memory within 10% of where it settled after the
warm-up. A summary table is printed (run with ``-s`` to see it).

``BON_SOAK_SECONDS`` (default 90, warm-up included) sets the length; deselect
with ``-m 'not soak'``.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import statistics
import time

import httpx
import psutil
import pytest
from conftest import ServerProcess, started

pytestmark = [pytest.mark.engine, pytest.mark.soak]

CONCURRENCY = 32
BEST_OF = (1, 2, 4, 8, 16)
SELECTORS = ("majority", "verifier", "weighted_majority", "logprob")
DISCONNECT_SHARE = 0.10
BAD_SHARE = 0.05
RSS_TOLERANCE = 0.10
QUESTIONS = ("What is 17 + 4 * 23 - 9?", "What is 6 * 7?", "What is 30 - 12 + 5?", "What is 2 + 3?")
BAD_BODIES = (
    {"messages": []},
    {"messages": [{"role": "user", "content": "hi"}], "best_of": 2, "n": 3},
    {"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"},
    {"messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b", "c", "d", "e"]},
    {"messages": [{"role": "user", "content": "hi"}], "best_of": 65},
    {"messages": [{"role": "user", "content": "1 + " * 400}]},
    {"messages": [{"role": "user", "content": "hi"}], "selector": "oracle"},
)


def rss_mib(pid: int) -> tuple[float, float]:
    """Resident memory of the server process, and of its children (the engine core)."""
    proc = psutil.Process(pid)
    children = sum(c.memory_info().rss for c in proc.children(recursive=True))
    return proc.memory_info().rss / 2**20, children / 2**20


def metric(text: str, name: str) -> float:
    """One sample of a Prometheus text page; ``name`` may carry its labels."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


class Tally:
    def __init__(self) -> None:
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.unexpected: list[str] = []
        self.latencies: list[float] = []
        self.sequences = 0

    def unexpected_outcome(self, what: str) -> None:
        self.outcomes["UNEXPECTED"] += 1
        if len(self.unexpected) < 20:
            self.unexpected.append(what)


async def one_request(client: httpx.AsyncClient, rng: random.Random, tally: Tally) -> None:
    if rng.random() < BAD_SHARE:
        r = await client.post("/v1/chat/completions", json=rng.choice(BAD_BODIES))
        if r.status_code == 400 and "error" in r.json():
            tally.outcomes["400 (bad input, expected)"] += 1
        else:
            tally.unexpected_outcome(f"bad input answered {r.status_code}: {r.text[:200]}")
        return
    best_of = rng.choice(BEST_OF)
    body = {
        "best_of": best_of,
        "n": rng.choice([1, min(2, best_of)]),
        "max_tokens": rng.randint(16, 128),
        "selector": rng.choice(SELECTORS),
        "stream": rng.random() < 0.3,
        "seed": rng.randrange(1 << 30) if rng.random() < 0.5 else None,
    }
    question = rng.choice(QUESTIONS)
    if rng.random() < 0.7:
        path = "/v1/chat/completions"
        body["messages"] = [{"role": "user", "content": question}]
    else:
        path = "/v1/completions"
        body["prompt"] = f"<|bos|><|user|>{question}<|end|><|assistant|>"
    tally.sequences += best_of
    if rng.random() < DISCONNECT_SHARE:
        body["ignore_eos"] = True  # long enough to be mid-generation when the client leaves
        body["max_tokens"] = 400
        task = asyncio.ensure_future(_send(client, path, body))
        await asyncio.sleep(rng.uniform(0.05, 1.0))
        if task.done():
            tally.outcomes["finished before the client left"] += 1
        else:
            task.cancel()
            tally.outcomes["client disconnected"] += 1
        await asyncio.gather(task, return_exceptions=True)
        return
    start = time.perf_counter()
    try:
        status, text = await _send(client, path, body)
    except httpx.HTTPError as exc:
        tally.unexpected_outcome(f"{type(exc).__name__}: {exc}")
        return
    tally.latencies.append(time.perf_counter() - start)
    ok = status == 200 and (
        not body["stream"] or (text.endswith("data: [DONE]\n\n") and '"error"' not in text)
    )
    if ok:
        tally.outcomes["200"] += 1
    elif status == 429:
        tally.outcomes["429 (admission)"] += 1
    else:
        tally.unexpected_outcome(f"{path} {status}: {text[:200]}")


async def _send(client: httpx.AsyncClient, path: str, body: dict) -> tuple[int, str]:
    if body["stream"]:
        async with client.stream("POST", path, json=body) as r:
            text = "".join([chunk async for chunk in r.aiter_text()])
            return r.status_code, text
    r = await client.post(path, json=body)
    return r.status_code, r.text


async def load(base_url: str, pid: int, seconds: float, warmup: float) -> dict:
    tally = Tally()
    samples: list[tuple[float, float, float]] = []
    stop_at = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=CONCURRENCY * 2)
    async with httpx.AsyncClient(base_url=base_url, timeout=300, limits=limits) as client:

        async def worker(i: int) -> None:
            rng = random.Random(i)
            while time.monotonic() < stop_at:
                await one_request(client, rng, tally)

        async def sampler() -> None:
            start = time.monotonic()
            while time.monotonic() < stop_at:
                main, engine = rss_mib(pid)
                samples.append((time.monotonic() - start, main, engine))
                await asyncio.sleep(2.0)

        await asyncio.gather(sampler(), *(worker(i) for i in range(CONCURRENCY)))
        metrics = (await client.get("/metrics")).text
    settled = [main for t, main, _ in samples if warmup - 10 <= t <= warmup]
    return {"tally": tally, "samples": samples, "settled": statistics.median(settled), "m": metrics}


def wait_drained(server: ServerProcess, timeout_s: float = 60) -> dict[str, float]:
    names = (
        "bon_requests_in_flight",
        "bon_sequences_in_flight",
        "bon_engine_unfinished_requests",
        "bon_admission_queue_length",
    )
    deadline = time.monotonic() + timeout_s
    while True:
        values = {name: server.metric(name) for name in names}
        if all(v == 0 for v in values.values()) or time.monotonic() > deadline:
            return values
        time.sleep(0.2)


SOAK_SECONDS = float(os.environ.get("BON_SOAK_SECONDS", "90"))


@pytest.mark.timeout(SOAK_SECONDS + 600)  # the load itself, on top of the usual per-test limit
def test_soak(tmp_path, tiny_orm):
    seconds = SOAK_SECONDS
    warmup = min(45.0, seconds / 3)
    args = [
        "--verifier",
        str(tiny_orm),
        "--max-sequences-in-flight",
        "128",
        "--admission-timeout",
        "60",
        "--request-timeout",
        "120",
        "--keepalive-interval-s",
        "0.5",
    ]
    with started(ServerProcess(args, tmp_path / "soak.log")) as server:
        result = asyncio.run(load(server.base_url, server.proc.pid, seconds, warmup))
        drained = wait_drained(server)
        end_main, end_engine = rss_mib(server.proc.pid)
        disconnects = server.metric("bon_client_disconnects_total")
        rejected = server.metric("bon_admission_rejected_total")
        admitted = metric(result["m"], "bon_admission_wait_seconds_count")
        wait_sum = metric(result["m"], "bon_admission_wait_seconds_sum")
        queued = admitted - metric(result["m"], 'bon_admission_wait_seconds_bucket{le="0.001"}')
        assert server.proc.poll() is None, server.tail()

    tally: Tally = result["tally"]
    settled = result["settled"]
    total = sum(tally.outcomes.values())
    lat = sorted(tally.latencies)
    rows = [
        ("duration (s), warm-up (s)", f"{seconds:.0f}, {warmup:.0f}"),
        ("concurrency", CONCURRENCY),
        ("requests", total),
        *((f"  {k}", v) for k, v in sorted(tally.outcomes.items())),
        ("sequences asked for", tally.sequences),
        ("latency p50 / p95 / max (s)", _percentiles(lat)),
        ("server disconnect counter", int(disconnects)),
        ("admission rejected (429)", int(rejected)),
        ("admitted requests / of which queued > 1 ms", f"{admitted:.0f} / {queued:.0f}"),
        ("admission wait, mean over admitted (s)", f"{wait_sum / max(admitted, 1):.3f}"),
        ("left in flight at the end", drained),
        ("server RSS settled / end (MiB)", f"{settled:.0f} / {end_main:.0f}"),
        ("server RSS min / max after warm-up (MiB)", _range(result["samples"], warmup)),
        ("engine-core RSS end (MiB)", f"{end_engine:.0f}"),
    ]
    width = max(len(str(k)) for k, _ in rows)
    print("\nsoak summary")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")

    assert not tally.unexpected, tally.unexpected
    assert tally.outcomes["200"] > 100
    assert tally.outcomes["client disconnected"] > 0
    # a client that leaves before its request is read is not a disconnect the server can see
    assert disconnects >= tally.outcomes["client disconnected"] * 0.5
    assert all(v == 0 for v in drained.values()), drained
    assert abs(end_main - settled) <= RSS_TOLERANCE * settled, (settled, end_main)


def _percentiles(values: list[float]) -> str:
    if not values:
        return "-"
    pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]  # noqa: E731
    return f"{pick(0.5):.2f} / {pick(0.95):.2f} / {values[-1]:.2f}"


def _range(samples: list[tuple[float, float, float]], warmup: float) -> str:
    after = [main for t, main, _ in samples if t >= warmup]
    return f"{min(after):.0f} / {max(after):.0f}" if after else "-"
