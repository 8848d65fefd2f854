"""The candidate page's server side: its files, its headers, what the key guard lets through,
``--no-ui``, the new-problem endpoint, and the candidates' PRM step scores it shows.

Through the scripted app over httpx's ASGI transport; the page itself is driven in a real
browser in ``test_ui_browser.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from asgi_app import KEY, app_with, chat_body, openai_error, running, scenario

from bon_server.config import EMBEDDED_DIR, Settings
from bon_server.generators.fake import ScriptedGenerator, ScriptedPRM
from bon_server.scorers.steps import split_steps
from bon_server.tasks import TASKS, task_for_question


def get(app, *paths, headers=None):
    async def run():
        async with running(app) as c:
            return [await c.get(p, headers=headers) for p in paths]

    return scenario(run)


def test_the_page_and_its_assets_are_served_with_a_strict_policy():
    page, js, css = get(app_with(), "/ui", "/ui/ui.js", "/ui/ui.css")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert js.headers["content-type"].startswith("text/javascript")
    assert css.headers["content-type"].startswith("text/css")
    for r in (page, js, css):
        csp = r.headers["content-security-policy"]
        # scripts, styles and connections: this origin only (the API key cannot leave it)
        for directive in ("default-src 'none'", "script-src 'self'", "connect-src 'self'"):
            assert directive in csp
        assert r.headers["x-content-type-options"] == "nosniff"
    html = page.text
    assert '<script src="/ui/ui.js"' in html and "http" not in html.replace("http-equiv", "")
    assert "innerHTML" not in js.text and "insertAdjacentHTML" not in js.text  # textContent only


def test_the_page_is_open_with_keys_configured_and_the_api_is_not():
    app = app_with(api_keys=(KEY,), world="arith")
    page, js, css, problem, models = get(
        app, "/ui", "/ui/ui.js", "/ui/ui.css", "/v1/bon/problem", "/v1/models"
    )
    assert page.status_code == js.status_code == css.status_code == 200
    openai_error(problem, 401)
    openai_error(models, 401)
    (problem,) = get(app, "/v1/bon/problem", headers={"Authorization": f"Bearer {KEY}"})
    assert problem.status_code == 200
    # only the page's own files are open, not whatever sits under /ui
    openai_error(get(app, "/ui/other")[0], 401)


def test_no_ui_turns_the_page_off():
    for path in ("/ui", "/ui/ui.js"):
        openai_error(get(app_with(ui=False), path)[0], 404)
    assert Settings(ui=False).ui is False


@pytest.mark.parametrize("world", sorted(TASKS))
def test_a_fresh_problem_is_the_worlds_prompt_and_a_seed_repeats_it(world):
    app = app_with(world=world)
    a, b, c, other = get(
        app, "/v1/bon/problem?seed=7", "/v1/bon/problem?seed=7", "/v1/bon/problem",
        "/v1/bon/problem?seed=8",
    )
    card = a.json()
    assert card["object"] == "bon.problem" and card["world"] == world and card["seed"] == 7
    assert card == b.json() and card["prompt"] != other.json()["prompt"]
    assert card["prompt"] == TASKS[world].problems(1, 7)[0].question
    assert task_for_question(card["prompt"]) is TASKS[world]
    assert task_for_question(c.json()["prompt"]) is TASKS[world]  # a random seed, same world


def test_the_world_comes_from_the_policy_else_a_clear_404(tmp_path: Path):
    assert Settings().served_world == "arith"  # the embedded policy's training_config
    assert Settings(model=str(EMBEDDED_DIR / "countdown-policy")).served_world == "countdown"
    assert Settings(model=str(tmp_path)).served_world is None  # no training_config.json
    assert Settings(model=str(tmp_path), world="paths").served_world == "paths"
    (tmp_path / "training_config.json").write_text(json.dumps({"command": "torchrun train.py"}))
    assert Settings(model=str(tmp_path)).served_world is None  # not one of ours
    err = openai_error(get(app_with(model=str(tmp_path)), "/v1/bon/problem")[0], 404)
    assert "--world" in err["message"] and err["code"] == "not_found"
    with pytest.raises(ValueError, match="unknown task 'chess'; valid tasks: arith"):
        Settings(world="chess")
    # a policy of ours whose world this server does not know (a newer one): a 404 naming it
    (tmp_path / "training_config.json").write_text(
        json.dumps({"command": "python -m verifier_training sft", "data": {"task": "chess"}})
    )
    err = openai_error(get(app_with(model=str(tmp_path)), "/v1/bon/problem")[0], 404)
    assert "'chess'" in err["message"] and "countdown" in err["message"]


@pytest.mark.parametrize(
    "query, param", [("seed=-1", "seed"), ("seed=abc", "seed"), (f"seed={2**31}", "seed"),
                     ("seed=1&world=paths", "world")],
)
def test_a_bad_query_is_a_400(query, param):
    err = openai_error(get(app_with(world="arith"), f"/v1/bon/problem?{query}")[0], 400)
    assert err["param"] == param


TEXTS = ("3 + 4 = 7\n7 * 2 = 14\nThe answer is 14.", "junk\n\nThe answer is 9.")


def test_candidates_carry_their_prm_step_scores():
    app = app_with(ScriptedGenerator(TEXTS), ScriptedPRM((0.9, 0.3, 0.6)))

    async def run():
        async with running(app) as c:
            body = chat_body(best_of=4, selector="verifier", return_candidates=True)
            with_prm = (await c.post("/v1/chat/completions", json=body)).json()["bon"]
            body["selector"] = "majority"  # no verifier ran: no step scores to show
            without = (await c.post("/v1/chat/completions", json=body)).json()["bon"]
            return with_prm, without

    bon, without = scenario(run)
    for cand in bon["candidates"]:
        steps = cand["steps"]
        assert [s["text"] for s in steps] == split_steps(cand["text"])  # blank lines dropped
        scores = [s["score"] for s in steps]
        assert scores == [0.9, 0.3, 0.6][: len(steps)]
        assert cand["verifier_score"] == min(scores)  # the server's aggregation, over these
    assert all(c["steps"] is None for c in without["candidates"])
