"""Load tests for OpenAI-compatible Best-of-N endpoints: what N costs and what it buys.

``python -m loadtest run`` drives one or more endpoints over a grid of (best_of,
concurrency) cells and writes, per cell, a JSON in ``vllm bench serve``'s key names plus
a Best-of-N block (accuracy, oracle coverage, tokens per correct answer); a summary CSV;
and plots. ``python -m loadtest bench`` measures the server against the bare engine.

This package talks to servers over HTTP only (it imports nothing of the server but the
answer checker); ``bench`` is the one place that builds an engine itself.
"""
