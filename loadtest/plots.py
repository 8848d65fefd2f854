"""Three PNGs from the cell reports, one line per endpoint:

- ``accuracy_vs_best_of.png``: accuracy (95% Wilson bars) against best_of, pooled over
  concurrency (accuracy does not depend on load);
- ``latency_vs_best_of.png``: p50 (solid) and p99 (dashed) end-to-end latency against
  best_of, one panel per concurrency;
- ``accuracy_vs_tokens.png``: accuracy against completion tokens per request (the Pareto
  view: what each extra token buys), points labelled with best_of.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .stats import wilson_interval  # noqa: E402


def _pooled(reports: Sequence[dict]) -> dict[str, list[tuple[int, int, int, float]]]:
    """endpoint -> [(best_of, correct, scored, tokens per request)] sorted by best_of."""
    acc: dict[tuple[str, int], list[float]] = defaultdict(lambda: [0, 0, 0.0])
    for r in reports:
        b = r["bon"]
        slot = acc[(r["endpoint"], b["best_of"])]
        slot[0] += b["correct"]
        slot[1] += b["scored"]
        slot[2] += (b["completion_tokens_per_request"] or 0.0) * b["scored"]
    lines: dict[str, list[tuple[int, int, int, float]]] = defaultdict(list)
    for (name, best_of), (correct, scored, tokens) in sorted(acc.items()):
        lines[name].append((best_of, int(correct), int(scored), tokens / scored if scored else 0))
    return lines


def plot_accuracy(reports: Sequence[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in _pooled(reports).items():
        points = [p for p in points if p[2]]
        xs = [p[0] for p in points]
        ys = [p[1] / p[2] for p in points]
        ci = [wilson_interval(p[1], p[2]) for p in points]
        err = [
            [y - lo for y, (lo, _) in zip(ys, ci, strict=True)],
            [hi - y for y, (_, hi) in zip(ys, ci, strict=True)],
        ]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("best_of")
    ax.set_ylabel("accuracy (95% Wilson)")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_latency(reports: Sequence[dict], path: Path) -> None:
    levels = sorted({r["max_concurrency"] for r in reports})
    fig, axes = plt.subplots(1, len(levels), figsize=(5 * len(levels), 4), squeeze=False)
    names = sorted({r["endpoint"] for r in reports})
    colors = {n: f"C{i}" for i, n in enumerate(names)}
    for ax, level in zip(axes[0], levels, strict=True):
        for name in names:
            cells = sorted(
                (r["bon"]["best_of"], r)
                for r in reports
                if r["endpoint"] == name
                and r["max_concurrency"] == level
                and r["median_e2el_ms"] is not None
            )
            xs = [b for b, _ in cells]
            ax.plot(
                xs,
                [r["median_e2el_ms"] for _, r in cells],
                "o-",
                color=colors[name],
                label=f"{name} p50",
            )
            ax.plot(
                xs,
                [r["p99_e2el_ms"] for _, r in cells],
                "s--",
                color=colors[name],
                label=f"{name} p99",
            )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("best_of")
        ax.set_ylabel("end-to-end latency (ms)")
        ax.set_title(f"concurrency {level}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    _save(fig, path)


def plot_pareto(reports: Sequence[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in _pooled(reports).items():
        points = [p for p in points if p[2]]
        xs = [p[3] for p in points]
        ys = [p[1] / p[2] for p in points]
        ax.plot(xs, ys, "o-", label=name)
        for (best_of, *_), x, y in zip(points, xs, ys, strict=True):
            ax.annotate(
                f"N={best_of}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize="small"
            )
    ax.set_xscale("log")
    ax.set_xlabel("completion tokens per request (all candidates)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, path)


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


PLOTS = {
    "accuracy_vs_best_of.png": plot_accuracy,
    "latency_vs_best_of.png": plot_latency,
    "accuracy_vs_tokens.png": plot_pareto,
}


def plot_all(reports: Sequence[dict], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for filename, plot in PLOTS.items():
        plot(reports, out / filename)
        paths.append(out / filename)
    return paths
