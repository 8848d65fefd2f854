"""The load tester: pure parts fast, then real runs against the session's real server."""

from __future__ import annotations

import asyncio
import csv
import json
import math
from pathlib import Path

import httpx
import pytest

from bon_server.tasks.arith import parse_question
from loadtest.cli import main as loadtest_main
from loadtest.client import Endpoint, RequestSpec, parse_compare, send
from loadtest.datasets import Item, load_dataset
from loadtest.report import SUMMARY_COLUMNS, cell_report
from loadtest.stats import (
    arrival_times,
    metric_sum,
    metrics_delta,
    parse_prometheus,
    parse_rate,
    summarize_ms,
    wilson_interval,
)

STATS = ("mean", "median", "std", "p99")
LATENCIES = ("ttft", "tpot", "itl", "e2el")
VLLM_KEYS = (
    "completed",
    "failed",
    "duration",
    "request_throughput",
    "output_throughput",
    *(f"{s}_{m}_ms" for m in LATENCIES for s in STATS),
)
BON_KEYS = (
    "best_of",
    "selector",
    "accuracy",
    "accuracy_ci95",
    "oracle_coverage",
    "completion_tokens_per_request",
    "completion_tokens_per_correct",
    "correct_per_second",
    "failures_by_status",
)
PLOTS = ("accuracy_vs_best_of.png", "latency_vs_best_of.png", "accuracy_vs_tokens.png")


# ------------------------------------------------------------------ statistics


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(10, 10)
    assert lo == pytest.approx(0.7225, abs=1e-4) and hi == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize("k,n", [(1, 3), (7, 20), (99, 100), (0, 1)])
def test_wilson_interval_contains_the_estimate_and_shrinks(k, n):
    lo, hi = wilson_interval(k, n)
    assert 0 <= lo <= k / n <= hi <= 1
    lo4, hi4 = wilson_interval(4 * k, 4 * n)
    assert hi4 - lo4 < hi - lo


def test_wilson_interval_refuses_impossible_counts():
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    with pytest.raises(ValueError):
        wilson_interval(-1, 2)


def test_summaries_use_vllm_names_and_numpy_conventions():
    s = summarize_ms("ttft", [0.001, 0.002, 0.003, 0.010])
    assert list(s) == [f"{stat}_ttft_ms" for stat in STATS]
    assert s["mean_ttft_ms"] == pytest.approx(4.0)
    assert s["median_ttft_ms"] == pytest.approx(2.5)
    assert s["std_ttft_ms"] == pytest.approx(math.sqrt((9 + 4 + 1 + 36) / 4))  # population
    assert s["p99_ttft_ms"] == pytest.approx(3 + 0.97 * 7)  # linear interpolation
    assert s["median_ttft_ms"] <= s["p99_ttft_ms"] <= 10.0
    assert summarize_ms("itl", []) == dict.fromkeys(f"{stat}_itl_ms" for stat in STATS)


def test_rates_parse_and_refuse():
    assert parse_rate("inf") == math.inf
    assert parse_rate("poisson:2.5") == 2.5
    for bad in ("poisson:0", "poisson:-1", "poisson:x", "3", "uniform:2", "poisson:inf"):
        with pytest.raises(ValueError):
            parse_rate(bad)


def test_infinite_rate_sends_everything_at_once():
    assert arrival_times(5, math.inf, seed=0) == [0.0] * 5


def test_poisson_schedule_is_seeded_increasing_with_mean_gap_one_over_rate():
    times = arrival_times(4000, 8.0, seed=3)
    assert times == arrival_times(4000, 8.0, seed=3)
    assert times != arrival_times(4000, 8.0, seed=4)
    assert times[0] == 0.0
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert all(g >= 0 for g in gaps)
    assert sum(gaps) / len(gaps) == pytest.approx(1 / 8.0, rel=0.08)


def test_prometheus_deltas_keep_counters_and_drop_gauges():
    before = parse_prometheus(
        "# TYPE bon_requests_total counter\n"
        'bon_requests_total{endpoint="chat",status="200"} 3\n'
        "# TYPE bon_requests_in_flight gauge\nbon_requests_in_flight 1\n"
        "# TYPE bon_scoring_duration_seconds histogram\n"
        'bon_scoring_duration_seconds_bucket{le="+Inf"} 3\n'
        "bon_scoring_duration_seconds_count 3\nbon_scoring_duration_seconds_sum 0.5\n"
    )
    after = parse_prometheus(
        "# TYPE bon_requests_total counter\n"
        'bon_requests_total{endpoint="chat",status="200"} 7\n'
        'bon_requests_total{endpoint="chat",status="400"} 1\n'
        "# TYPE bon_requests_in_flight gauge\nbon_requests_in_flight 0\n"
        "# TYPE bon_scoring_duration_seconds histogram\n"
        'bon_scoring_duration_seconds_bucket{le="+Inf"} 7\n'
        "bon_scoring_duration_seconds_count 7\nbon_scoring_duration_seconds_sum 1.5\n"
    )
    delta = metrics_delta(before, after)
    assert delta == {
        'bon_requests_total{endpoint="chat",status="200"}': 4.0,
        'bon_requests_total{endpoint="chat",status="400"}': 1.0,
        "bon_scoring_duration_seconds_count": 4.0,
        "bon_scoring_duration_seconds_sum": 1.0,
    }
    assert metric_sum(delta, "bon_requests_total") == 5.0


# ------------------------------------------------------------------ datasets


def test_arith_dataset_is_seeded_chat_with_right_answers():
    items = load_dataset("arith", 20, seed=5)
    assert items == load_dataset("arith", 20, seed=5)
    assert len(items) == 20
    for item in items:
        (message,) = item.messages
        assert message["role"] == "user"
        assert str(parse_question(message["content"]).answer) == item.answer


@pytest.mark.parametrize("world", ["countdown", "paths"])
def test_world_datasets_are_graded_by_their_checker(world, tmp_path: Path):
    from bon_server.tasks import get_task

    task = get_task(world)
    items = load_dataset(world, 10, seed=3)
    assert items == load_dataset(world, 10, seed=3)
    for item, problem in zip(items, task.problems(10, 3), strict=True):
        assert item.task == world and item.messages[0]["content"] == problem.question
        assert item.is_right(task.reference(problem)) and not item.is_right("The answer is 1.")
    # a file names its world; the answer is then optional
    path = tmp_path / "w.jsonl"
    path.write_text(json.dumps({"task": world, "messages": list(items[0].messages)}) + "\n")
    (again,) = load_dataset(str(path), 1)
    assert again.task == world and again.is_right(task.reference(task.problems(1, 3)[0]))
    path.write_text(json.dumps({"task": world, "prompt": "What is 2 + 3?"}) + "\n")
    with pytest.raises(ValueError, match=f"not a {world} prompt"):
        load_dataset(str(path), 1)
    path.write_text(json.dumps({"task": "chess", "prompt": "e4"}) + "\n")
    with pytest.raises(ValueError, match="unknown task 'chess'"):
        load_dataset(str(path), 1)


def test_grading_uses_the_item_world_for_every_candidate():
    from loadtest.client import RequestResult, grade

    (item,) = load_dataset("countdown", 1, seed=0)
    right = get_reference(item)
    other = "The answer is " + "+".join(["1"] * 3) + "."
    r = RequestResult(ok=True, texts={0: other, 1: right})
    grade(r, item)
    assert r.correct is False and r.oracle is True


def get_reference(item):
    from bon_server.tasks import get_task

    task = get_task(item.task)
    return task.reference(item.problem())


def test_jsonl_dataset_reads_messages_and_prompts_and_cycles(tmp_path: Path):
    path = tmp_path / "d.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": "What is 2 + 3?"}], "answer": 5},
        {"prompt": "2 * 4 =", "answer": "8"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    items = load_dataset(str(path), 5)
    assert [i.answer for i in items] == ["5", "8", "5", "8", "5"]
    assert items[0].messages == ({"role": "user", "content": "What is 2 + 3?"},)
    assert items[1].prompt == "2 * 4 =" and items[1].messages is None


@pytest.mark.parametrize(
    "line",
    [
        '{"prompt": "x"}',
        '{"prompt": "x", "messages": [{"role": "user", "content": "y"}], "answer": 1}',
        '{"messages": [], "answer": 1}',
        '{"prompt": 3, "answer": 1}',
        "not json",
    ],
)
def test_jsonl_dataset_refuses_bad_lines_with_their_place(tmp_path: Path, line: str):
    path = tmp_path / "bad.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1"):
        load_dataset(str(path), 1)


def test_unknown_dataset_is_refused():
    with pytest.raises(ValueError, match="arith"):
        load_dataset("no-such-file.jsonl", 1)


def test_compare_specs():
    assert parse_compare("vllm=plain:http://127.0.0.1:8001/") == Endpoint(
        "vllm", "http://127.0.0.1:8001", "plain"
    )
    assert parse_compare("b=http://h:1").kind == "auto"
    for bad in ("nourl", "x=ftp://h", "=http://h"):
        with pytest.raises(ValueError):
            parse_compare(bad)


# ------------------------------------------------------------------ client, on a fake transport


def _sse(events: list[str]) -> bytes:
    return "".join(e if e.startswith(":") else f"data: {e}\n\n" for e in events).encode()


def _fake(body: bytes, status: int = 200, seen: list | None = None) -> httpx.AsyncClient:
    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(json.loads(request.content))
        return httpx.Response(status, content=body, headers={"content-type": "text/event-stream"})

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


def _chunk(choices, **extra):
    return json.dumps({"object": "chat.completion.chunk", "choices": choices, **extra})


ITEM = Item("7", messages=({"role": "user", "content": "What is 3 + 4?"},))


def _send(client, kind, best_of=2):
    endpoint = Endpoint("e", "http://fake", kind, "m")
    spec = RequestSpec(best_of=best_of, max_tokens=16, temperature=1.0, selector="majority")
    return asyncio.run(send(client, endpoint, ITEM, spec, timeout_s=10))


def test_plain_endpoint_gets_n_and_grades_choice_zero_and_the_oracle():
    events = [
        ": keep-alive\n\n",
        _chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}}]),
        _chunk([{"index": 1, "delta": {"role": "assistant", "content": ""}}]),
        _chunk([{"index": 0, "delta": {"content": "The answer "}}]),
        _chunk([{"index": 1, "delta": {"content": "The answer is 7."}}]),
        _chunk([{"index": 0, "delta": {"content": "is 8."}}]),
        _chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
        _chunk([], usage={"prompt_tokens": 5, "completion_tokens": 30, "total_tokens": 35}),
        "[DONE]",
    ]
    seen: list = []
    r = _send(_fake(_sse(events), seen=seen), "plain")
    assert seen[0]["n"] == 2 and "best_of" not in seen[0] and seen[0]["stream"] is True
    assert seen[0]["stream_options"] == {"include_usage": True}
    assert r.ok and r.failure is None
    assert r.texts == {0: "The answer is 8.", 1: "The answer is 7."}
    assert r.correct is False and r.oracle is True
    assert r.output_tokens == 30 and r.prompt_tokens == 5
    assert len(r.itl) == 2  # three content chunks, the empty role deltas are not tokens
    assert 0 <= r.ttft <= r.e2el
    assert r.tpot == pytest.approx((r.e2el - r.ttft) / 29)


def test_bon_endpoint_gets_best_of_and_grades_the_candidates():
    bon = {
        "best_of": 3,
        "selector": "majority",
        "scores": [0.6, 0.6, 0.3],
        "chosen": [0],
        "candidates": [
            {"index": i, "text": t, "answer": None, "completion_tokens": 9}
            for i, t in enumerate(["The answer is 7.", "The answer is 7.", "The answer is 1."])
        ],
    }
    events = [
        ": keep-alive\n\n",
        _chunk(
            [{"index": 0, "delta": {"role": "assistant", "content": ""}, "score": 0.6}], bon=bon
        ),
        _chunk([{"index": 0, "delta": {"content": "The answer is 7."}}]),
        _chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
        _chunk([], usage={"prompt_tokens": 5, "completion_tokens": 27, "total_tokens": 32}),
        "[DONE]",
    ]
    seen: list = []
    r = _send(_fake(_sse(events), seen=seen), "bon", best_of=3)
    assert seen[0]["n"] == 1 and seen[0]["best_of"] == 3
    assert seen[0]["selector"] == "majority" and seen[0]["return_candidates"] is True
    assert r.ok and r.correct is True and r.oracle is True and r.bon == bon
    assert r.itl == [] and r.output_tokens == 27


def test_non_streamed_plain_request_reads_every_choice_and_usage():
    body = {
        "object": "chat.completion",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "The answer is 8."}},
            {"index": 1, "message": {"role": "assistant", "content": "The answer is 7."}},
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 30, "total_tokens": 35},
    }
    seen: list = []
    endpoint = Endpoint("e", "http://fake", "plain", "m")
    spec = RequestSpec(best_of=2, max_tokens=16, temperature=1.0, stream=False)
    client = _fake(json.dumps(body).encode(), seen=seen)
    r = asyncio.run(send(client, endpoint, ITEM, spec, timeout_s=10))
    assert seen[0]["stream"] is False and "stream_options" not in seen[0] and seen[0]["n"] == 2
    assert r.ok and r.texts == {0: "The answer is 8.", 1: "The answer is 7."}
    assert r.correct is False and r.oracle is True and r.output_tokens == 30
    assert r.ttft == r.e2el > 0
    r = asyncio.run(send(_fake(b'{"error": {}}', 400), endpoint, ITEM, spec, timeout_s=10))
    assert not r.ok and r.failure == "400"


def test_failures_are_recorded_by_status_and_never_raised():
    r = _send(_fake(b'{"error": {"message": "no"}}', status=400), "bon")
    assert not r.ok and r.failure == "400" and "no" in r.error
    mid_stream = _sse([": keep-alive\n\n", json.dumps({"error": {"message": "boom"}}), "[DONE]"])
    r = _send(_fake(mid_stream), "bon")
    assert not r.ok and r.failure == "stream_error"
    r = _send(_fake(_sse([": keep-alive\n\n"])), "bon")  # cut off before [DONE]
    assert not r.ok and r.failure == "incomplete"


def test_cell_report_counts_and_keys():
    events = [
        _chunk([{"index": 0, "delta": {"content": "The answer is 7."}}]),
        _chunk([], usage={"prompt_tokens": 5, "completion_tokens": 10}),
        "[DONE]",
    ]
    good = _send(_fake(_sse(events)), "plain")
    bad = _send(_fake(b"{}", status=503), "plain")
    spec = RequestSpec(best_of=2, max_tokens=16, temperature=1.0)
    report = cell_report(
        Endpoint("e", "http://fake", "plain", "m"),
        spec,
        2,
        math.inf,
        [good, good, bad],
        2.0,
        None,
        None,
    )
    assert set(VLLM_KEYS) <= set(report) and set(BON_KEYS) <= set(report["bon"])
    assert report["completed"] == 2 and report["failed"] == 1
    assert report["request_throughput"] == 1.0 and report["output_throughput"] == 10.0
    assert report["bon"]["accuracy"] == 1.0 and report["bon"]["correct_per_second"] == 1.0
    assert report["bon"]["completion_tokens_per_correct"] == 10.0
    assert report["bon"]["failures_by_status"] == {"503": 1}
    assert report["request_rate"] == "inf" and report["server_metrics"] == {"scraped": False}
    json.dumps(report, allow_nan=False)


# ------------------------------------------------------------------ the real server


def _cells(out: Path) -> dict[tuple[str, int, int], dict]:
    cells = {}
    for path in sorted((out / "cells").glob("*.json")):
        r = json.loads(path.read_text())
        cells[(r["endpoint"], r["bon"]["best_of"], r["max_concurrency"])] = r
    return cells


def _check_cell(r: dict, requests: int) -> None:
    assert set(VLLM_KEYS) <= set(r) and set(BON_KEYS) <= set(r["bon"])
    assert r["completed"] == requests and r["failed"] == 0 and r["errors"] == []
    bon = r["bon"]
    lo, hi = bon["accuracy_ci95"]
    assert 0 <= lo <= bon["accuracy"] <= hi <= 1
    assert bon["accuracy"] <= bon["oracle_coverage"]  # the chosen one is one of the candidates
    assert bon["completion_tokens_per_request"] >= bon["best_of"]  # every candidate counted
    assert r["total_output_tokens"] == bon["completion_tokens_per_request"] * requests
    assert r["duration"] > 0 and r["request_throughput"] > 0 and r["output_throughput"] > 0
    for m in ("ttft", "e2el", "tpot"):
        assert 0 <= r[f"median_{m}_ms"] <= r[f"p99_{m}_ms"]
        assert r[f"std_{m}_ms"] >= 0 and r[f"mean_{m}_ms"] >= 0
    assert r["median_ttft_ms"] <= r["median_e2el_ms"]
    assert bon["failures_by_status"] == {}


# Only these start (share) the engine; everything above runs under -m 'not engine'.
engine = pytest.mark.engine


@engine
def test_grid_against_the_real_server(server, tmp_path: Path):
    out = tmp_path / "run"
    code = loadtest_main(
        [
            "run",
            "--base-url",
            server.base_url,
            "--best-of",
            "1,2",
            "--concurrency",
            "1,2",
            "--requests",
            "4",
            "--max-tokens",
            "64",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    # no --dataset: the world the server says it serves
    assert json.loads((out / "config.json").read_text())["dataset"] == "arith"
    cells = _cells(out)
    assert set(cells) == {("bon", b, c) for b in (1, 2) for c in (1, 2)}
    for r in cells.values():
        _check_cell(r, 4)
        assert r["endpoint_kind"] == "bon" and r["model_id"] == "arith-policy"
        assert r["bon"]["selector"] == "verifier"  # the server's default with its ORM
        metrics = r["server_metrics"]
        assert metrics["scraped"]
        assert metric_sum(metrics["delta"], "bon_requests_total") == 4
        assert (
            metric_sum(metrics["delta"], "bon_candidates_generated_total")
            == 4 * r["bon"]["best_of"]
        )
        assert (
            metric_sum(metrics["delta"], "bon_completion_tokens_total") == r["total_output_tokens"]
        )
        assert 0 <= metrics["scoring_share"] <= 1
    with (out / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and list(rows[0]) == list(SUMMARY_COLUMNS)
    for name in PLOTS:
        assert (out / "plots" / name).read_bytes().startswith(b"\x89PNG")
    html = (out / "report.html").read_text()  # opened in a browser in test_ui_browser.py
    assert html.count('src="data:image/png;base64,') == len(PLOTS)
    assert html.count("<tr>") == 1 + len(cells)  # the header, then one row per cell
    config = json.loads((out / "config.json").read_text())
    assert config["endpoints"][0]["kind"] == "bon" and config["rate"] == "inf"


@engine
def test_compare_runs_every_endpoint_under_the_same_load(server, tmp_path: Path):
    out = tmp_path / "compare"
    code = loadtest_main(
        [
            "run",
            "--base-url",
            server.base_url,
            "--name",
            "main",
            "--compare",
            f"again={server.base_url}",
            "--best-of",
            "2",
            "--concurrency",
            "2",
            "--requests",
            "4",
            "--rate",
            "poisson:20",
            "--selector",
            "majority",
            "--max-tokens",
            "64",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    cells = _cells(out)
    assert set(cells) == {("main", 2, 2), ("again", 2, 2)}
    for r in cells.values():
        _check_cell(r, 4)
        assert r["endpoint_kind"] == "bon"  # probed
        assert r["bon"]["selector"] == "majority" and r["request_rate"] == 20.0
    with (out / "summary.csv").open() as f:
        assert [row["endpoint"] for row in csv.DictReader(f)] == ["main", "again"]
    for name in PLOTS:
        assert (out / "plots" / name).is_file()


@engine
def test_refused_requests_are_counted_by_status(server, tmp_path: Path):
    out = tmp_path / "refused"
    code = loadtest_main(
        [
            "run",
            "--base-url",
            server.base_url,
            "--best-of",
            "65",
            "--concurrency",
            "1",
            "--requests",
            "2",
            "--out",
            str(out),
            "--no-progress",
            "--no-plots",
        ]
    )
    assert code == 1
    (r,) = _cells(out).values()
    assert r["completed"] == 0 and r["failed"] == 2
    assert r["bon"]["failures_by_status"] == {"400": 2}
    assert r["bon"]["accuracy"] is None and r["median_e2el_ms"] is None
    assert "best_of" in r["errors"][0]


# ------------------------------------------------------------------ the benchmark's table


def test_bench_table_reports_ratios_and_targets():
    from loadtest.bench import Side, _summary, table

    def side(ms: list[float], tokens: int = 100, duration: float = 1.0) -> Side:
        return Side([m / 1000 for m in ms], tokens, duration, len(ms))

    a = {"server": side([110, 120, 130]), "stock": side([100, 100, 100]),
         "engine": side([118, 118])}  # p50 120 vs 100 -> 1.2x, missed; vs 118: met
    b = {"server": side([1] * 10, 500, 2.0), "stock": side([1] * 10, 500, 2.1),
         "engine": side([1] * 10, 500, 1.0)}  # 5 vs 4.76 req/s: met; 5 vs 10: missed
    c = {"server": side([50, 50]), "stock": side([40, 40]), "engine": side([60])}
    summary = _summary(16, 16, a, b, c)
    stock, engine = summary["ratios"]["stock"], summary["ratios"]["engine"]
    assert stock["a_p50"] == pytest.approx(1.2) and not stock["a_met"]
    assert stock["b"] == pytest.approx(2.1 / 2.0) and stock["b_met"]
    assert engine["a_met"] and engine["b"] == pytest.approx(0.5) and not engine["b_met"]
    assert summary["sides"]["server"]["c_scaling"] == pytest.approx(120 / 50)
    text = table(summary | {"verifier": {"available": False}})
    assert "1.200x MISSED" in text and "1.050x" in text and "0.500x MISSED" in text
    assert "(<= 1.10x)" in text and "(>= 0.90x)" in text
    header = [c.strip() for c in text.splitlines()[0].split("|")[2:5]]
    assert header == ["server", "stock", "engine"]
    assert "no verifier available" in text
    verifier = {
        "available": True,
        "kind": "orm",
        "server_p50_e2el_ms": 150.0,
        "floor_p50_e2el_ms": 100.0,
        "latency_ratio_p50": 1.5,
        "scoring_share": 0.25,
    }
    text = table(summary | {"verifier": verifier})
    assert "25.0%" in text and "1.500x" in text
    assert len({len(line) for line in text.splitlines()}) == 1  # a well-formed table


def test_adaptive_runs_beside_fixed_n_under_the_same_load(tmp_path: Path):
    """``--adaptive``: every cell also as NAME+adaptive, which sends adaptive=true; on a
    unanimous scripted server it draws one wave of 4 where fixed N draws all 16."""
    from asgi_app import app_with, served

    from bon_server.generators.fake import ScriptedGenerator

    app = app_with(ScriptedGenerator(["= 5\nThe answer is 5."]), adaptive_min=4, adaptive_wave=4)
    with served(app) as port:
        code = loadtest_main([
            "run", "--base-url", f"http://127.0.0.1:{port}", "--adaptive", "--best-of", "16",
            "--concurrency", "2", "--requests", "4", "--selector", "majority", "--out",
            str(tmp_path), "--no-progress", "--no-plots",
        ])
    assert code == 0
    cells = _cells(tmp_path)
    assert set(cells) == {("bon", 16, 2), ("bon+adaptive", 16, 2)}
    per_request = {name: r["bon"]["completion_tokens_per_request"] for (name, _, _), r in
                   cells.items()}
    assert per_request["bon+adaptive"] * 4 == per_request["bon"]
    delta = cells[("bon+adaptive", 16, 2)]["server_metrics"]["delta"]
    assert metric_sum(delta, "bon_candidates_not_drawn_total") == 4 * 12


def test_prune_runs_beside_fixed_n(tmp_path: Path):
    from asgi_app import app_with, served

    from bon_server.generators.fake import ConstantScorer, ScriptedGenerator

    text = "1 + 1 = 2\n2 + 2 = 4\nThe answer is 4."
    app = app_with(ScriptedGenerator([text], delay_s=0.002), ConstantScorer((0.1, 0.9)))
    with served(app) as port:
        code = loadtest_main([
            "run", "--base-url", f"http://127.0.0.1:{port}", "--prune", "--best-of", "8",
            "--concurrency", "1", "--requests", "3", "--out", str(tmp_path), "--no-progress",
            "--no-plots",
        ])
    assert code == 0
    cells = _cells(tmp_path)
    assert set(cells) == {("bon", 8, 1), ("bon+prune", 8, 1)}
    delta = cells[("bon+prune", 8, 1)]["server_metrics"]["delta"]
    assert metric_sum(delta, "bon_candidates_pruned_total") == 3 * 4
    pruned = cells[("bon+prune", 8, 1)]["bon"]["completion_tokens_per_request"]
    assert pruned < cells[("bon", 8, 1)]["bon"]["completion_tokens_per_request"] == 8 * len(text)
