"""Pure statistics: summaries in ``vllm bench serve``'s conventions, Wilson intervals,
arrival schedules, and Prometheus text parsing. No I/O.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence

import numpy as np

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for a binomial proportion; (0, 1) when there are no trials."""
    if trials < 0 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes}/{trials}")
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    z2 = z * z
    denom = 1 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / denom
    # exact at the ends (rounding would otherwise leave 0.9999999999999999)
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == trials else min(1.0, centre + half)
    return lo, hi


def summarize_ms(name: str, seconds: Sequence[float]) -> dict[str, float | None]:
    """``mean_/median_/std_/p99_<name>_ms`` as ``vllm bench serve`` writes them.

    numpy's mean, median, population std and linearly interpolated percentile, in
    milliseconds. With no values the keys are present and None (vLLM writes 0 there,
    which reads as a measurement).
    """
    keys = [f"{stat}_{name}_ms" for stat in ("mean", "median", "std", "p99")]
    if not seconds:
        return dict.fromkeys(keys)
    v = np.asarray(seconds, dtype=float) * 1000.0
    values = (np.mean(v), np.median(v), np.std(v), np.percentile(v, 99))
    return {k: float(x) for k, x in zip(keys, values, strict=True)}


def percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else None


# ------------------------------------------------------------------ arrivals


def parse_rate(text: str) -> float:
    """``inf`` -> math.inf; ``poisson:R`` -> R requests per second (R > 0)."""
    text = text.strip().lower()
    if text in ("inf", "infinity"):
        return math.inf
    kind, _, value = text.partition(":")
    if kind == "poisson":
        try:
            rate = float(value)
        except ValueError:
            rate = -1.0
        if rate > 0 and math.isfinite(rate):
            return rate
    raise ValueError(f"rate must be 'inf' or 'poisson:R' with R > 0 requests/s, got {text!r}")


def arrival_times(count: int, rate: float, seed: int) -> list[float]:
    """Offsets (s) at which each request may start: all 0 for an infinite rate, else a
    seeded Poisson process (first at 0, exponential gaps of mean 1/rate)."""
    if rate == math.inf:
        return [0.0] * count
    rng = random.Random(seed)
    times, t = [], 0.0
    for i in range(count):
        if i:
            t += rng.expovariate(rate)
        times.append(t)
    return times


# ------------------------------------------------------------------ Prometheus


def parse_prometheus(text: str) -> dict[str, float]:
    """Every sample as ``name{label="v",...}`` -> value (labels sorted); ``_created`` and
    histogram buckets are dropped (they only make the cell JSONs long)."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.endswith(("_created", "_bucket")):
                continue
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}" if labels else s.name] = float(s.value)
    return samples


def metrics_delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """after - before for counters and histogram sums/counts (samples only in ``after``
    started at 0); gauges are not differences and are left out."""
    out = {}
    for key, value in after.items():
        name = key.split("{", 1)[0]
        if name.endswith(("_total", "_sum", "_count")):
            diff = value - before.get(key, 0.0)
            if diff:
                out[key] = diff
    return out


def metric_sum(samples: Mapping[str, float], name: str) -> float:
    """The sum of a metric over all of its label sets."""
    return sum(v for k, v in samples.items() if k == name or k.startswith(name + "{"))
