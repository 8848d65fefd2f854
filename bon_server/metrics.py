"""Prometheus metrics on an injected registry (one ``Metrics`` per app, none global)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


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
        self.candidates_not_drawn = Counter(
            "bon_candidates_not_drawn_total",
            "Candidates a request could have drawn (best_of) that adaptive sampling did not.",
            registry=r,
        )
        self.candidates_pruned = Counter(
            "bon_candidates_pruned_total",
            "Candidates aborted part-way by verifier-guided pruning.",
            registry=r,
        )
        self.tokens_not_generated = Counter(
            "bon_completion_tokens_not_generated_total",
            "Estimated tokens saved: each candidate not drawn or pruned, short of the request's "
            "mean finished candidate length.",
            registry=r,
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
        # reliability (issue 6)
        self.sequences_in_flight = Gauge(
            "bon_sequences_in_flight",
            "Sequences admitted and not yet finished (each request counts best_of x prompts).",
            registry=r,
        )
        self.admission_queued = Gauge(
            "bon_admission_queue_length", "Requests waiting for admission.", registry=r
        )
        self.admission_wait = Histogram(
            "bon_admission_wait_seconds",
            "Time admitted requests waited in the admission queue.",
            buckets=QUEUE_BUCKETS,
            registry=r,
        )
        self.admission_rejected = Counter(
            "bon_admission_rejected_total",
            "Requests refused with 429 because the server was full.",
            registry=r,
        )
        self.request_timeouts = Counter(
            "bon_request_timeouts_total",
            "Requests whose work passed --request-timeout and was aborted.",
            registry=r,
        )
        self.auth_failures = Counter(
            "bon_auth_failures_total", "Requests refused with 401.", registry=r
        )
        # the in-process engine's own metrics (vLLM's vllm:*), served beside ours
        self.engine_families = _Borrowed()
        r.register(self.engine_families)


class _Borrowed:
    """Metric families another library keeps (vLLM's), read at scrape time; none until
    ``source`` is set."""

    def __init__(self) -> None:
        self.source: Callable[[], Iterable[Any]] | None = None

    def collect(self) -> Iterable[Any]:
        return self.source() if self.source is not None else ()
