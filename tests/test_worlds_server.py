"""Each shipped world's policy end to end: served with no flag but ``--model`` (its
``serving.json``, where it ships one, sets the verifier and selector; else majority), on the
real engine, answering its world's fresh problems.

Countdown votes by an answer's value and numbers: every right candidate carries one answer.
On seeded best_of=16 requests the selector's pick must be right on some request where
candidate 0 (what best_of=1 would have returned) is wrong, and every request's usage must
count all 16 candidates.
"""

from __future__ import annotations

import json

import httpx
import pytest
from conftest import ROOT, ServerProcess, started

from bon_server.tasks import TASKS, get_task, policy_task

EMBEDDED = ROOT / "bon_server" / "embedded"
WORLDS = sorted(
    p.name.removesuffix("-policy")
    for p in EMBEDDED.glob("*-policy")
    if p.name.removesuffix("-policy") in TASKS and p.name != "arith-policy"
)
# every shipped policy of a new world: the SFT ones above and those post-trained from them
# (``countdown-policy-rsft``)
POLICIES = sorted(
    p.name for p in EMBEDDED.glob("*-policy*")
    if p.is_dir() and policy_task(str(p)) in TASKS and policy_task(str(p)) != "arith"
)
REQUESTS = 48

pytestmark = pytest.mark.engine


def test_the_new_worlds_policies_ship():
    assert "countdown" in WORLDS
    for world in WORLDS:
        assert policy_task(str(EMBEDDED / f"{world}-policy")) == world


@pytest.mark.parametrize("name", POLICIES)
def test_shipped_world_picks_right_where_candidate_zero_is_wrong(name, tmp_path):
    policy = EMBEDDED / name
    world = policy_task(str(policy))
    serving = policy / "serving.json"
    selector = json.loads(serving.read_text())["default_selector"] if serving.is_file() \
        else "majority"
    task = get_task(world)
    with started(ServerProcess(["--model", str(policy)], tmp_path / "server.log")) as server:
        models = httpx.get(f"{server.base_url}/v1/models", timeout=10).json()
        assert models["data"][0]["id"] == name
        rescued, picked, first = [], 0, 0
        for i, problem in enumerate(task.problems(REQUESTS, seed=4242)):
            body = {
                "model": name,
                "messages": [{"role": "user", "content": problem.question}],
                "max_tokens": 128,
                "seed": i,
                "best_of": 16,
                "return_candidates": True,
            }
            r = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=120)
            assert r.status_code == 200, r.text
            data = r.json()
            bon = data["bon"]
            assert bon["selector"] == selector and len(bon["candidates"]) == 16
            assert data["usage"]["completion_tokens"] == sum(
                c["completion_tokens"] for c in bon["candidates"])
            if world == "countdown":  # the world's vote: one answer for every right way
                key = f"[{','.join(map(str, sorted(problem.numbers)))}]->{problem.target}"
                for c in bon["candidates"]:
                    assert (c["answer"] == key) == task.check(problem, c["text"]), c
            chosen = task.check(problem, data["choices"][0]["message"]["content"])
            zero = task.check(problem, bon["candidates"][0]["text"])
            picked, first = picked + chosen, first + zero
            if chosen and not zero:
                rescued.append(i)
    assert rescued, f"the {selector} pick never beat candidate 0 (picked {picked}, first {first})"
