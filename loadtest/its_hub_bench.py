"""its_hub's step searches beside bon's, on the same hidden Countdown problems and one vLLM.

One stock vLLM OpenAI server of the Countdown policy is started (or given with
``--vllm-url``); both systems draw every token from it:

- ``its_hub`` 1.2.0: ``ParticleFiltering`` and ``BeamSearch`` (``beam_width`` 4: the 4 best
  paths kept, each copied budget / 4 times) at ``--budget`` 16, its ``StepGeneration``
  stepping at ``\\n`` and stopping at ``The answer is`` through the server's
  ``/v1/chat/completions`` (one request per live path per step, the path so far sent back as
  an assistant message to continue), and the Countdown exact checker as its process reward
  model (``CountdownPRM``: scored as bon's ``task:countdown`` scores a beam, below);
- ``bon``: ``bon-server serve --upstream <vLLM>/v1 --verifier task:countdown`` (proxy mode),
  ``search: particles`` and ``beam`` (``beam_width`` 4: 16 / 4 beams kept, each expanded 4
  ways), and ``best_of_n``, each at ``best_of`` 16 with ``selector: verifier``.

Each row reads vLLM's ``/metrics`` before and after its problems: the generated tokens
(``vllm:generation_tokens_total``), the prompt tokens (``vllm:prompt_tokens_total``) and the
HTTP requests to ``/v1/completions``, ``/v1/chat/completions`` and ``/tokenize``
(``http_requests_total``), per problem. Problems go one at a time (each system runs its own
requests of a problem concurrently).

The scorer (``CountdownPRM``) mirrors ``bon_server.scorers.plugins.TaskStepScorer`` with its
default ``last`` aggregation: a text whose last line is ``The answer is ...`` scores the
world's checker of the whole text; otherwise its last step line scores the world's exact step
check (true arithmetic on numbers still available, the target still reachable; 0 for a line
of no known shape). One difference: its_hub hands the scorer no sign that a path ended (EOS)
without an answer, which bon scores 0; here such a path scores its last step.

Runs in its own venv (``make its-hub-venv``), which has none of bon's dependencies: the
checker comes from ``bon_server.tasks`` (standard library only), found by putting the
repository root on ``sys.path`` (the path trick below). The servers run from ``--venv``
(default ``.venv``).

    make its-hub-venv
    .venv-its-hub/bin/python loadtest/its_hub_bench.py --problems 100 \\
        --json runs/search/its_hub_bench.json
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import os
import platform
import random
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from its_hub.api import AbstractProcessRewardModel
from its_hub.core.algorithms.beam_search import BeamSearch
from its_hub.core.algorithms.particle_gibbs import ParticleFiltering
from its_hub.core.lms.openai_lm import OpenAICompatibleLanguageModel
from its_hub.core.lms.step_generation import StepGeneration

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the path trick: bon_server.tasks, which imports only stdlib
from bon_server.tasks import get_task  # noqa: E402
from bon_server.tasks.base import EVAL_SEED, answer_line  # noqa: E402

ANSWER_PREFIX = "The answer is"
HANDLERS = ("/v1/completions", "/v1/chat/completions", "/tokenize")
ROWS = (("its_hub", "particles"), ("its_hub", "beam"),
        ("bon", "particles"), ("bon", "beam"), ("bon", "best_of_n"))


class CountdownPRM(AbstractProcessRewardModel):
    """The Countdown exact checkers as its_hub's process reward model (one score per text)."""

    def __init__(self) -> None:
        self.task = get_task("countdown")

    def score_text(self, problem: Any, text: str) -> float:
        steps = [line.strip() for line in text.splitlines() if line.strip()]
        if not steps:
            return 0.0
        if answer_line(steps[-1]) is not None:
            return float(self.task.check(problem, text))
        ok = self.task.check_step(problem, steps, len(steps) - 1)
        return 0.0 if ok is None else float(ok)

    async def ascore(self, prompt_or_messages: Any, steps: Any) -> Any:
        problem = self.task.parse(str(prompt_or_messages))
        if problem is None:
            raise ValueError(f"not a Countdown prompt: {prompt_or_messages!r}")
        if isinstance(steps, str):
            return self.score_text(problem, steps)
        return [self.score_text(problem, text) for text in steps]

    def score(self, prompt_or_messages: Any, steps: Any) -> Any:
        return asyncio.run(self.ascore(prompt_or_messages, steps))


# ------------------------------------------------------------------ servers and metrics


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", VLLM_CPU_KVCACHE_SPACE="1",
               PYTHONUNBUFFERED="1")
    log.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                            cwd=ROOT)


def wait_ready(proc: subprocess.Popen | None, url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited early")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url}: not healthy after {timeout_s} s")


def stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def scrape(url: str) -> dict[str, float]:
    """The counters this bench reads, summed over their other labels."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as r:
        text = r.read().decode()
    out = {"generation_tokens": 0.0, "prompt_tokens": 0.0, "requests": 0.0}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
        if name == "vllm:generation_tokens_total":
            out["generation_tokens"] += value
        elif name == "vllm:prompt_tokens_total":
            out["prompt_tokens"] += value
        elif name == "http_requests_total" and any(
            f'handler="{h}"' in labels for h in HANDLERS
        ):
            out["requests"] += value
    return out


def post(url: str, body: dict[str, Any], timeout: float) -> tuple[int, str]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


# ------------------------------------------------------------------ the two systems


async def its_hub_one(algo: Any, lm: Any, question: str, budget: int) -> tuple[str, int]:
    result = await algo.ainfer(lm, question, budget=budget, return_response_only=False)
    steps = getattr(result, "steps_used", None) or getattr(result, "steps_used_lst", [0])
    return result.the_one["content"], max(steps)


def bon_one(url: str, model: str, question: str, method: str, args: argparse.Namespace,
            seed: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "best_of": args.budget,
        "selector": "verifier",
        "search": method,
    }
    if method == "beam":
        body["beam_width"] = args.beam_width
    if method != "best_of_n":
        body["search_max_steps"] = args.max_steps
    if seed is not None:
        body["seed"] = seed
    status, text = post(f"{url}/v1/chat/completions", body, args.timeout)
    if status != 200:
        return {"error": {"status": status, "request": body, "response": text}}
    out = json.loads(text)
    return {"text": out["choices"][0]["message"]["content"],
            "usage": out["usage"]["completion_tokens"],
            "steps": (out["bon"].get("search") or {}).get("steps")}


def run_row(system: str, method: str, problems: list, task: Any, vllm: str, bon: str | None,
            model: str, args: argparse.Namespace) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    error = None
    before = scrape(vllm)
    t0 = time.perf_counter()
    if system == "its_hub":
        random.seed(args.seed)  # its_hub resamples with random and numpy's global generators
        np.random.seed(args.seed)
        sg = StepGeneration(max_steps=args.max_steps, step_token="\n", stop_token=ANSWER_PREFIX,
                            temperature=args.temperature)
        prm = CountdownPRM()
        algo = (ParticleFiltering(sg, prm) if method == "particles"
                else BeamSearch(sg, prm, beam_width=args.beam_width))

        async def all_problems() -> None:
            lm = OpenAICompatibleLanguageModel(
                endpoint=f"{vllm}/v1", api_key="none", model_name=model,
                max_tokens=args.max_tokens, temperature=args.temperature)
            try:
                for p in problems:
                    text, steps = await its_hub_one(algo, lm, p.question, args.budget)
                    rows.append({"right": task.check(p, text), "steps": steps, "text": text})
            finally:
                await lm.close()

        asyncio.run(all_problems())
    else:
        assert bon is not None
        for i, p in enumerate(problems):
            seed = None if args.bon_seed is None else args.bon_seed + i
            row = bon_one(bon, model, p.question, method, args, seed)
            if "error" in row:
                error = row["error"]
                print(f"ERROR bon {method}: request {json.dumps(error['request'])} -> HTTP "
                      f"{error['status']} {error['response'][:2000]}", file=sys.stderr)
                break
            row["right"] = task.check(p, row["text"])
            rows.append(row)
    wall = time.perf_counter() - t0
    after = scrape(vllm)
    delta = {k: after[k] - before[k] for k in before}
    return {"system": system, "method": method, "rows": rows, "wall_s": wall, "delta": delta,
            "error": error}


def table_row(cell: dict[str, Any]) -> str:
    k = max(1, len(cell["rows"]))
    acc = sum(r["right"] for r in cell["rows"]) / k
    usage = [r["usage"] for r in cell["rows"] if "usage" in r]
    steps = [r["steps"] for r in cell["rows"] if r.get("steps") is not None]
    system = {"its_hub": "its_hub 1.2.0", "bon": "bon-server (proxy)"}[cell["system"]]
    parts = [
        system, cell["method"], str(len(cell["rows"])), f"{acc:.3f}",
        f"{cell['delta']['generation_tokens'] / k:.0f}",
        f"{sum(usage) / k:.0f}" if usage else "-",
        f"{cell['delta']['prompt_tokens'] / k:.0f}",
        f"{cell['delta']['requests'] / k:.1f}",
        f"{cell['wall_s']:.1f}",
        f"{sum(steps) / len(steps):.2f}" if steps else "-",
    ]
    if cell["error"] is not None:
        parts[2] += f" (stopped: HTTP {cell['error']['status']})"
    return "| " + " | ".join(parts) + " |"


HEADER = ("| system | method | problems | accuracy | completion tokens / problem (vLLM) "
          "| completion tokens / problem (bon usage) | prompt tokens / problem (vLLM) "
          "| upstream HTTP requests / problem | wall s (set) | steps |\n"
          "|---|---|---|---|---|---|---|---|---|---|")


def meta() -> dict[str, str]:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, cwd=ROOT, check=False).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                            "bon_server", "loadtest"], capture_output=True, text=True,
                           cwd=ROOT, check=False).stdout.strip()
    cpu = platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {"date": dt.date.today().isoformat(),
            "commit": head + (" (+ uncommitted changes in bon_server/ or loadtest/)"
                              if dirty else ""),
            "machine": f"{os.cpu_count()} cores of {cpu}"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--problems", type=int, default=100, help="hidden Countdown problems "
                   "(seed 1234, the same as loadtest/step_search.py's)")
    p.add_argument("--budget", type=int, default=16, help="its_hub budget, bon best_of")
    p.add_argument("--beam-width", type=int, default=4, help="beam width of both systems")
    p.add_argument("--max-steps", type=int, default=16,
                   help="its_hub StepGeneration max_steps, bon search_max_steps")
    p.add_argument("--max-tokens", type=int, default=128,
                   help="max_tokens: bon's per candidate, its_hub's per step request")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--rows", default=",".join(f"{s}:{m}" for s, m in ROWS),
                   help="comma-separated system:method rows, run in this order")
    p.add_argument("--bon-seed", type=int, default=None,
                   help="seed bon's requests (problem i: this + i); default unseeded like "
                   "its_hub's (a seeded step search sends one upstream request per kept beam)")
    p.add_argument("--seed", type=int, default=0, help="its_hub's resampling seed")
    p.add_argument("--policy", default="bon_server/embedded/countdown-policy",
                   help="the policy the vLLM server serves")
    p.add_argument("--venv", type=Path, default=ROOT / ".venv",
                   help="the venv with vllm and bon-server that runs the servers")
    p.add_argument("--vllm-url", default=None,
                   help="a running stock vLLM server of the policy (default: start one)")
    p.add_argument("--bon-url", default=None,
                   help="a running bon-server proxy over that vLLM (default: start one)")
    p.add_argument("--startup-timeout", type=float, default=600.0,
                   help="seconds to wait for each server started here")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per bon request")
    p.add_argument("--logs", type=Path, default=ROOT / "runs/search/its_hub_bench",
                   help="directory for the servers' logs")
    p.add_argument("--json", type=Path, default=None, help="write every result here")
    args = p.parse_args()

    warnings.filterwarnings("ignore", category=DeprecationWarning)  # its_hub's agenerate
    logging.basicConfig(level=logging.WARNING)
    task = get_task("countdown")
    problems = task.problems(args.problems, EVAL_SEED)
    rows = [tuple(r.split(":")) for r in args.rows.split(",")]
    procs: list[subprocess.Popen] = []
    cells: list[dict[str, Any]] = []
    info = meta()
    try:
        vllm, vllm_cmd = args.vllm_url, None
        if vllm is None:
            port = free_port()
            vllm_cmd = [str(args.venv / "bin/python"), "-m", "vllm.entrypoints.openai.api_server",
                        "--model", args.policy, "--host", "127.0.0.1", "--port", str(port),
                        "--no-enable-chunked-prefill", "--generation-config", "vllm",
                        "--block-size", "32"]
            t0 = time.perf_counter()
            procs.append(start(vllm_cmd, args.logs / "vllm.log"))
            vllm = f"http://127.0.0.1:{port}"
            wait_ready(procs[-1], vllm, args.startup_timeout)
            print(f"vLLM up in {time.perf_counter() - t0:.0f} s", flush=True)
        vllm = vllm.rstrip("/")
        with urllib.request.urlopen(f"{vllm}/v1/models", timeout=30) as r:
            model = json.loads(r.read())["data"][0]["id"]
        bon, bon_cmd = args.bon_url, None
        if bon is None and any(s == "bon" for s, _ in rows):
            port = free_port()
            bon_cmd = [str(args.venv / "bin/bon-server"), "serve", "--upstream", f"{vllm}/v1",
                       "--verifier", "task:countdown", "--world", "countdown",
                       "--host", "127.0.0.1", "--port", str(port)]
            t0 = time.perf_counter()
            procs.append(start(bon_cmd, args.logs / "bon.log"))
            bon = f"http://127.0.0.1:{port}"
            wait_ready(procs[-1], bon, args.startup_timeout)
            print(f"bon-server up in {time.perf_counter() - t0:.0f} s", flush=True)
        bon_model = model
        if bon is not None:
            bon = bon.rstrip("/")
            with urllib.request.urlopen(f"{bon}/v1/models", timeout=30) as r:
                bon_model = json.loads(r.read())["data"][0]["id"]
        print(f"date {info['date']}, commit {info['commit']}, machine {info['machine']}")
        print(f"vLLM: {' '.join(vllm_cmd) if vllm_cmd else vllm}")
        print(f"bon:  {' '.join(bon_cmd) if bon_cmd else bon}")
        print(f"{len(problems)} hidden Countdown problems (seed {EVAL_SEED}), budget "
              f"{args.budget}, beam width {args.beam_width}, temperature {args.temperature}, "
              f"max_tokens {args.max_tokens}, bon seeded: {args.bon_seed is not None}; scorer: "
              f"the Countdown exact checker (the perfect-PRM upper bound) in both")
        print(HEADER, flush=True)
        for system, method in rows:
            cell = run_row(system, method, problems, task, vllm, bon,
                           model if system == "its_hub" else bon_model, args)
            cells.append(cell)
            print(table_row(cell), flush=True)
            if args.json:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps({"meta": {**info, "argv": sys.argv,
                                                          "vllm": vllm_cmd, "bon": bon_cmd},
                                                 "cells": cells}))
    finally:
        for proc in reversed(procs):
            stop(proc)


if __name__ == "__main__":
    main()
