"""Where a py-spy profile's time went: ``python docs/profile_summary.py PROFILE.json``.

Reads py-spy's speedscope output (``py-spy record --subprocesses -f speedscope``) and prints,
per process (the bon-server, vLLM's EngineCore, its CPU worker), the CPU seconds sampled and
the share of them in each stage, a stage being the innermost frame that matches one of
``STAGES`` (so a JSON encode inside a route counts as JSON, not as the route). Idle threads
are not sampled (py-spy's default), so the shares are of the time a process was busy.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter, defaultdict

# (stage, pattern on "file:function"), innermost match wins; order breaks ties within a frame
STAGES = [
    # vLLM's shared-memory queue: a reader busy-polls (sched_yield) for 1 s after each read
    ("waiting on the shm queue (spin)", r"shm_broadcast|distributed/utils\.py:sched_yield"),
    ("model forward (torch)", r"torch/|vllm/model_executor/"),
    ("sampler", r"vllm/v1/sample/"),
    ("engine scheduler", r"vllm/v1/core/"),
    ("engine worker / runner", r"vllm/v1/worker/|vllm/v1/executor/"),
    ("engine IPC (zmq, msgpack)", r"zmq/|msgspec|vllm/v1/serial_utils"),
    ("engine core loop", r"vllm/v1/engine/core\.py"),
    ("detokenize / output processing", r"vllm/v1/engine/(output_processor|detokenizer)|tokenizers"),
    ("vLLM client (AsyncLLM)", r"vllm/v1/engine/async_llm|vllm/v1/engine/core_client"),
    ("bon: verifier scoring", r"bon_server/scorers/"),
    ("bon: selection, answers", r"bon_server/(selectors|answers|search)"),
    ("bon: pipeline", r"bon_server/(pipeline|generators)"),
    ("bon: responses, streaming", r"bon_server/(responses|streaming|protocol|routes)"),
    ("bon: logs, metrics", r"bon_server/(logs|metrics)|prometheus_client|logging/"),
    ("JSON, pydantic", r"json/|pydantic"),
    ("HTTP (uvicorn, starlette)", r"uvicorn/|starlette/|fastapi/|h11/|httptools"),
    ("asyncio loop", r"asyncio/"),
]
COMPILED = [(name, re.compile(pattern)) for name, pattern in STAGES]


def stage_of(stack: list[str]) -> str:
    for frame in reversed(stack):  # innermost first
        for name, pattern in COMPILED:
            if pattern.search(frame):
                return name
    return "other"


def summarize(path: str) -> str:
    with open(path) as f:
        data = json.load(f)
    frames = [f"{f.get('file') or ''}:{f['name']}" for f in data["shared"]["frames"]]
    seconds: dict[str, Counter[str]] = defaultdict(Counter)
    names: dict[str, str] = {}
    for profile in data["profiles"]:
        pid = profile["name"].split()[1]
        for sample, weight in zip(profile["samples"], profile["weights"], strict=True):
            stack = [frames[i] for i in sample]
            seconds[pid][stage_of(stack)] += weight
            names[pid] = role(stack, names.get(pid))
    lines = []
    for pid, stages in sorted(seconds.items(), key=lambda kv: -sum(kv[1].values())):
        total = sum(stages.values())
        if total < 0.1:
            continue  # helpers (multiprocessing's resource tracker)
        lines.append(f"\n{names.get(pid) or 'process'} (pid {pid}): {total:.1f} CPU s sampled")
        lines.append("| stage | CPU s | share |")
        lines.append("|---|---|---|")
        for stage, s in stages.most_common():
            if s / total >= 0.005:
                lines.append(f"| {stage} | {s:.1f} | {s / total:.1%} |")
    return "\n".join(lines)


def role(stack: list[str], known: str | None) -> str | None:
    """What a process is: py-spy roots a subprocess's stacks at its ancestors' command lines
    (``process PID:"CMD"`` frames), the innermost being its own."""
    if known is not None:
        return known
    own = [f for f in stack if f.startswith(":process ")]
    if not own:
        return None
    command = own[-1].split(':"', 1)[-1].rstrip('"')
    return command.split(" --")[0].split("/")[-1][-60:]


if __name__ == "__main__":
    print(summarize(sys.argv[1]))
