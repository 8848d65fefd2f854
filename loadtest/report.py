"""Per-cell reports in ``vllm bench serve``'s key names plus a ``bon`` block, the summary
CSV (one row per cell), and the table a run prints (and ``report.html`` shows).

Accuracy and oracle coverage are over completed requests (failures are counted apart,
by HTTP status); accuracy is the returned choice 0, oracle coverage is "any candidate
right" (Best-of-N endpoints with ``return_candidates``; every choice of a plain one).
"""

from __future__ import annotations

import csv
import datetime as dt
import math
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from .client import Endpoint, RequestResult, RequestSpec
from .stats import metric_sum, metrics_delta, parse_prometheus, summarize_ms, wilson_interval


def cell_report(
    endpoint: Endpoint,
    spec: RequestSpec,
    concurrency: int,
    rate: float,
    results: Sequence[RequestResult],
    duration: float,
    metrics_before: str | None,
    metrics_after: str | None,
) -> dict:
    ok = [r for r in results if r.ok]
    output_tokens = [r.output_tokens or 0 for r in ok]
    input_tokens = [r.prompt_tokens or 0 for r in ok]
    report: dict = {
        "date": dt.datetime.now().strftime("%Y%m%d-%H%M%S"),
        "backend": "openai-chat",
        "label": endpoint.name,
        "endpoint": endpoint.name,
        "base_url": endpoint.base_url,
        "endpoint_kind": endpoint.kind,
        "model_id": endpoint.model,
        "num_prompts": len(results),
        "request_rate": "inf" if rate == math.inf else rate,
        "max_concurrency": concurrency,
        "duration": duration,
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "total_input_tokens": sum(input_tokens),
        "total_output_tokens": sum(output_tokens),
        "request_throughput": len(ok) / duration if duration > 0 else 0.0,
        "output_throughput": sum(output_tokens) / duration if duration > 0 else 0.0,
        "total_token_throughput": (sum(output_tokens) + sum(input_tokens)) / duration
        if duration > 0
        else 0.0,
    }
    report |= summarize_ms("ttft", [r.ttft for r in ok if r.ttft is not None])
    report |= summarize_ms("tpot", [t for r in ok if (t := r.tpot) is not None])
    report |= summarize_ms("itl", [gap for r in ok for gap in r.itl])
    report |= summarize_ms("e2el", [r.e2el for r in ok if r.e2el is not None])
    report["bon"] = bon_block(spec, endpoint, ok, results, duration)
    report["server_metrics"] = server_metrics(metrics_before, metrics_after)
    report["errors"] = [r.error for r in results if not r.ok][:10]
    return report


def bon_block(
    spec: RequestSpec,
    endpoint: Endpoint,
    ok: Sequence[RequestResult],
    results: Sequence[RequestResult],
    duration: float,
) -> dict:
    correct = sum(bool(r.correct) for r in ok)
    tokens = sum(r.output_tokens or 0 for r in ok)
    with_oracle = [r for r in ok if r.oracle is not None]
    selectors = sorted({r.bon.get("selector", "?") for r in ok if r.bon})
    if endpoint.kind == "plain":
        selector = "none (choice 0)"
    else:
        selector = ",".join(selectors) or spec.selector
    lo, hi = wilson_interval(correct, len(ok))
    block = {
        "best_of": spec.best_of,
        "selector": selector,
        "scored": len(ok),
        "correct": correct,
        "accuracy": correct / len(ok) if ok else None,
        "accuracy_ci95": [lo, hi],
        "oracle_coverage": None,
        "oracle_coverage_ci95": None,
        "completion_tokens_per_request": tokens / len(ok) if ok else None,
        "completion_tokens_per_correct": tokens / correct if correct else None,
        "correct_per_second": correct / duration if duration > 0 else 0.0,
        "failures_by_status": dict(Counter(r.failure or "?" for r in results if not r.ok)),
    }
    if with_oracle and len(with_oracle) == len(ok):
        hits = sum(bool(r.oracle) for r in with_oracle)
        block["oracle_coverage"] = hits / len(with_oracle)
        block["oracle_coverage_ci95"] = list(wilson_interval(hits, len(with_oracle)))
    return block


def server_metrics(before: str | None, after: str | None) -> dict:
    """The /metrics scrapes around the cell: counter deltas, and for a bon server the
    time split (generation vs scoring, summed over the cell's requests)."""
    if before is None or after is None:
        return {"scraped": False}
    b, a = parse_prometheus(before), parse_prometheus(after)
    delta = metrics_delta(b, a)
    out: dict = {"scraped": True, "delta": delta}
    request_s = metric_sum(delta, "bon_request_duration_seconds_sum")
    if request_s > 0:
        scoring_s = metric_sum(delta, "bon_scoring_duration_seconds_sum")
        generation_s = metric_sum(delta, "bon_generation_duration_seconds_sum")
        out |= {
            "request_seconds": request_s,
            "generation_seconds": generation_s,
            "scoring_seconds": scoring_s,
            "scoring_share": scoring_s / request_s,
        }
    return out


SUMMARY_COLUMNS = (
    "endpoint",
    "best_of",
    "max_concurrency",
    "selector",
    "completed",
    "failed",
    "duration",
    "request_throughput",
    "output_throughput",
    "accuracy",
    "accuracy_ci95_low",
    "accuracy_ci95_high",
    "oracle_coverage",
    "completion_tokens_per_request",
    "completion_tokens_per_correct",
    "correct_per_second",
    "mean_ttft_ms",
    "median_ttft_ms",
    "p99_ttft_ms",
    "mean_tpot_ms",
    "median_itl_ms",
    "mean_e2el_ms",
    "median_e2el_ms",
    "p99_e2el_ms",
    "scoring_share",
    "failures_by_status",
)


def summary_row(report: dict) -> dict:
    bon = report["bon"]
    row = {k: report.get(k) for k in SUMMARY_COLUMNS}
    row |= {
        "best_of": bon["best_of"],
        "selector": bon["selector"],
        "accuracy": bon["accuracy"],
        "accuracy_ci95_low": bon["accuracy_ci95"][0],
        "accuracy_ci95_high": bon["accuracy_ci95"][1],
        "oracle_coverage": bon["oracle_coverage"],
        "completion_tokens_per_request": bon["completion_tokens_per_request"],
        "completion_tokens_per_correct": bon["completion_tokens_per_correct"],
        "correct_per_second": bon["correct_per_second"],
        "scoring_share": report["server_metrics"].get("scoring_share"),
        "failures_by_status": ";".join(f"{k}:{v}" for k, v in bon["failures_by_status"].items()),
    }
    return row


def write_summary(path: Path, reports: Sequence[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        for report in reports:
            writer.writerow({k: "" if v is None else v for k, v in summary_row(report).items()})


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


# The run's table: (header, width, alignment, cell) per column, one row per cell report.
TABLE: tuple[tuple[str, int, str, Callable[[dict], str]], ...] = (
    ("endpoint", 12, "<", lambda r: r["endpoint"]),
    ("N", 3, ">", lambda r: str(r["bon"]["best_of"])),
    ("conc", 4, ">", lambda r: str(r["max_concurrency"])),
    ("ok", 4, ">", lambda r: str(r["completed"])),
    ("fail", 4, ">", lambda r: str(r["failed"])),
    ("acc", 5, ">", lambda r: _fmt(r["bon"]["accuracy"], ".2f")),
    ("oracle", 6, ">", lambda r: _fmt(r["bon"]["oracle_coverage"], ".2f")),
    ("req/s", 7, ">", lambda r: f"{r['request_throughput']:.2f}"),
    ("p50 ms", 8, ">", lambda r: _fmt(r["median_e2el_ms"], ".0f")),
    ("p99 ms", 8, ">", lambda r: _fmt(r["p99_e2el_ms"], ".0f")),
    ("tok/req", 8, ">", lambda r: _fmt(r["bon"]["completion_tokens_per_request"], ".0f")),
    ("tok/correct", 11, ">", lambda r: _fmt(r["bon"]["completion_tokens_per_correct"], ".0f")),
)


def table_cells(report: dict) -> list[str]:
    return [cell(report) for _, _, _, cell in TABLE]
