"""``report.html``: a run's table and plots in one file that opens from disk.

The same table the run prints (``report.TABLE``), the run's settings, and every plot
embedded as a ``data:`` PNG, so the file can be mailed or attached on its own; nothing
is fetched from anywhere. Every value from the run (endpoint names, URLs, selectors) is
HTML-escaped.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Sequence
from html import escape
from pathlib import Path

from .report import TABLE, table_cells

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; color: #1d232b; max-width: 1200px; margin: 0 auto;
  padding: 16px 24px; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 24px; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 3px 10px; border-bottom: 1px solid #d6dbe1; }
th { text-align: left; background: #eef1f5; } td.num, th.num { text-align: right; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; }
dt { color: #5d6978; } dd { margin: 0; font-family: ui-monospace, monospace; }
figure { margin: 12px 0; } img { max-width: 100%; border: 1px solid #d6dbe1; }
figcaption { color: #5d6978; }
"""


def _settings(config: dict) -> str:
    rows = []
    for key in ("dataset", "requests", "best_of", "concurrency", "rate", "selector",
                "max_tokens", "temperature", "seed"):
        if key in config:
            rows.append(f"<dt>{escape(key)}</dt><dd>{escape(str(config[key]))}</dd>")
    for e in config.get("endpoints", []):
        what = f"{e.get('kind', '?')} {e.get('base_url', '')} model {e.get('model', '')}"
        rows.append(f"<dt>endpoint {escape(str(e.get('name')))}</dt><dd>{escape(what)}</dd>")
    return "<dl>" + "".join(rows) + "</dl>"


def _table(reports: Sequence[dict]) -> str:
    def cls(align: str) -> str:
        return ' class="num"' if align == ">" else ""

    head = "".join(f"<th{cls(align)}>{escape(name)}</th>" for name, _, align, _ in TABLE)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td{cls(align)}>{escape(cell)}</td>"
            for (_, _, align, _), cell in zip(TABLE, table_cells(r), strict=True)
        )
        + "</tr>"
        for r in reports
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    name = escape(path.name)
    return (
        f'<figure><img alt="{name}" src="data:image/png;base64,{data}">'
        f"<figcaption>{name}</figcaption></figure>"
    )


def write_html(path: Path, reports: Sequence[dict], config: dict, plots: Sequence[Path]) -> Path:
    """Write ``path`` (``report.html``); ``plots``: the PNGs to embed, in order."""
    when = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    figures = "".join(_figure(p) for p in plots) or "<p>No plots (--no-plots).</p>"
    html = (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<title>bon load test</title>"
        f"<style>{STYLE}</style></head><body>"
        f"<h1>bon load test, {escape(when)}</h1>"
        f"<h2>Settings</h2>{_settings(config)}"
        "<h2>Results</h2><p>One row per cell (endpoint, best_of N, concurrency); acc is the "
        "returned answer's accuracy, oracle the share of requests with any right candidate; "
        "latencies are end to end.</p>"
        f"{_table(reports)}<h2>Plots</h2>{figures}</body></html>\n"
    )
    path.write_text(html)
    return path
