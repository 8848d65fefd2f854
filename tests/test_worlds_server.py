"""Each shipped world end to end: its policy served with no flags but ``--model``, its
shipped verifier and selector applied from ``serving.json``, on the real engine.

On seeded best_of=16 requests over fresh problems, the verifier's pick must be right on a
request where candidate 0 (what best_of=1 would have returned) is wrong, and must be right
at least as often as candidate 0 over them all.
"""

from __future__ import annotations

import json

import httpx
import pytest
from conftest import ROOT, ServerProcess, started

from verifier_training.tasks import get_task

EMBEDDED = ROOT / "bon_server" / "embedded"
SHIPPED = sorted(
    p.name.removesuffix("-policy")
    for p in EMBEDDED.glob("*-policy")
    if (p / "serving.json").is_file()
    and json.loads((p / "serving.json").read_text()).get("verifier")
)
REQUESTS = 24


def test_some_world_ships_a_verifier():
    assert SHIPPED, "no embedded policy ships a verifier in its serving.json"


@pytest.mark.parametrize("world", SHIPPED)
def test_shipped_world_picks_right_where_candidate_zero_is_wrong(world, tmp_path):
    serving = json.loads((EMBEDDED / f"{world}-policy" / "serving.json").read_text())
    task = get_task(world)
    args = ["--model", str(EMBEDDED / f"{world}-policy")]
    with started(ServerProcess(args, tmp_path / "server.log")) as server:
        models = httpx.get(f"{server.base_url}/v1/models", timeout=10).json()
        assert models["data"][0]["id"] == f"{world}-policy"
        picked = first = 0
        rescued = []
        for i, problem in enumerate(task.problems(REQUESTS, seed=4242)):
            body = {
                "model": f"{world}-policy",
                "messages": [{"role": "user", "content": problem.question}],
                "max_tokens": 96,
                "seed": i,
                "best_of": 16,
                "return_candidates": True,
            }
            r = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=120)
            assert r.status_code == 200, r.text
            data = r.json()
            bon = data["bon"]
            assert bon["selector"] == serving["default_selector"]
            assert bon["verifier_scores"] is not None and len(bon["candidates"]) == 16
            chosen = task.check(problem, data["choices"][0]["message"]["content"])
            zero = task.check(problem, bon["candidates"][0]["text"])
            picked += chosen
            first += zero
            if chosen and not zero:
                rescued.append(i)
    assert rescued, f"the verifier never rescued a request (picked {picked}, first {first})"
    assert picked >= first
