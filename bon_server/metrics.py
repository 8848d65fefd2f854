"""Prometheus metrics on an injected registry (one ``Metrics`` per app, none global)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.request_duration = Histogram(
            "bon_request_duration_seconds",
            "End-to-end request latency.",
            ["endpoint", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "bon_requests_total",
            "Requests by endpoint and HTTP status.",
            ["endpoint", "status"],
            registry=r,
        )
        self.in_flight = Gauge(
            "bon_requests_in_flight", "Best-of-N requests being served now.", registry=r
        )
        self.candidates = Counter(
            "bon_candidates_generated_total", "Candidates sampled.", ["selector"], registry=r
        )
        self.prompt_tokens = Counter(
            "bon_prompt_tokens_total", "Prompt tokens processed.", registry=r
        )
        self.completion_tokens = Counter(
            "bon_completion_tokens_total", "Tokens generated across all candidates.", registry=r
        )
        self.generation_duration = Histogram(
            "bon_generation_duration_seconds",
            "Time to sample all candidates of a request.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.scoring_duration = Histogram(
            "bon_scoring_duration_seconds",
            "Time to score all candidates of a request.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.engine_unfinished = Gauge(
            "bon_engine_unfinished_requests",
            "Sequences the engine still holds (read at scrape time).",
            registry=r,
        )
        self.client_disconnects = Counter(
            "bon_client_disconnects_total", "Requests abandoned by their client.", registry=r
        )
