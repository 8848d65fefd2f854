"""The candidate page in a real browser: Debian's Chromium, headless, driven by Playwright.

Against the real server (the embedded policy on vLLM with the tiny PRM of
``test_prm_server.py``): the page loads, a fresh problem comes from the served world, a
request shows every candidate with its scores, the PRM's step tints and the vote chart,
and the chosen one is marked with its rule. Against the scripted app on real uvicorn:
candidate text holding markup renders as text, and the key prompt with keys configured
(the key goes only to this server).

Chromium comes from Debian's packages (the Makefile installs it; nothing may download a
browser here); Playwright's own browser downloads are never used.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from asgi_app import KEY, app_with, served
from conftest import PRM_AGGREGATION
from playwright.sync_api import expect

from bon_server.generators.fake import ScriptedGenerator, ScriptedPRM
from bon_server.tasks import task_for_question

CHROMIUM = Path("/usr/bin/chromium")
# as root, with this machine's closed network: no sandbox, no background connections
ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), "Debian's chromium is missing: run `make test` (it installs it)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser) -> Iterator:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, errors  # no script error on the page


def run_and_capture(page) -> dict:
    """Click Run; the JSON the page received."""
    with page.expect_response(re.compile(r"/v1/chat/completions$")) as info:
        page.click("#run")
    response = info.value
    assert response.ok, response.text()
    body = response.json()
    page.wait_for_selector(".candidate")
    return body


def shown(page, selector: str) -> list[str]:
    return [e.inner_text() for e in page.query_selector_all(selector)]


# ------------------------------------------------------------- the real server, with a PRM

# the ends of the tint scale as the browser computes them (scores 0 and 1)
RED_GREEN = """() => [0, 120].map(hue => {
    const probe = document.createElement("div");
    probe.style.backgroundColor = `hsl(${hue}, 75%, 85%)`;
    document.body.append(probe);
    const colour = getComputedStyle(probe).backgroundColor;
    probe.remove();
    return colour;
})"""


@pytest.mark.engine
def test_the_page_shows_every_candidate_its_scores_steps_and_votes(page, prm_server):
    page.goto(f"{prm_server.base_url}/ui")
    page.wait_for_selector("#main:not([hidden])")
    assert "arith-policy" in page.inner_text("#served")

    page.click("#new-problem")
    expect(page.locator("#prompt")).not_to_have_value("")
    prompt = page.input_value("#prompt")
    assert task_for_question(prompt) is not None and prompt.startswith("What is")

    page.fill("#best-of", "6")
    page.select_option("#selector", "verifier")
    page.fill("#seed", "3")
    body = run_and_capture(page)
    bon = body["bon"]
    cands = bon["candidates"]
    assert len(cands) == 6 and bon["selector"] == "verifier"

    cards = page.query_selector_all(".candidate")
    assert [c.get_attribute("data-index") for c in cards] == [str(i) for i in range(6)]
    assert shown(page, ".fact-verifier") == [f"{c['verifier_score']:.3f}" for c in cands]
    assert shown(page, ".fact-tokens") == [str(c["completion_tokens"]) for c in cands]
    assert shown(page, ".fact-finish") == [c["finish_reason"] for c in cands]
    assert shown(page, ".fact-answer") == [c["answer"] or "(no answer)" for c in cands]
    (chosen,) = page.query_selector_all(".candidate.chosen")
    assert chosen.get_attribute("data-index") == str(bon["chosen"][0])
    rule = page.inner_text("#rule")
    assert f"candidate #{bon['chosen'][0]}" in rule and f"aggregated by {PRM_AGGREGATION}" in rule

    # every step tinted by its own score: red 0, yellow 0.5, green 1 (hue 120 x score)
    scored = [s["score"] for c in cands for s in c["steps"] if s["score"] is not None]
    rows = page.query_selector_all(".step[data-score]")
    assert len(rows) == len(scored) >= 6
    colours = [r.evaluate("e => getComputedStyle(e).backgroundColor") for r in rows]
    expected = page.evaluate(
        """scores => scores.map(s => {
            const probe = document.createElement("div");
            probe.style.backgroundColor = `hsl(${Math.round(120 * s)}, 75%, 85%)`;
            document.body.append(probe);
            const colour = getComputedStyle(probe).backgroundColor;
            probe.remove();
            return colour;
        })""",
        scored,
    )
    assert colours == expected
    red, green = (list(map(int, re.findall(r"\d+", c))) for c in page.evaluate(RED_GREEN))
    assert red[0] > red[1] and green[1] > green[0]  # the scale's ends: 0 red, 1 green

    # the vote chart: one bar per distinct answer, counts as in the response
    votes = Counter(c["answer"] or "(no answer)" for c in cands)
    assert dict(zip(shown(page, ".vote-answer"), map(int, [
        b.get_attribute("data-count") for b in page.query_selector_all(".vote-bar")
    ]), strict=True)) == dict(votes)

    # majority: the rule in words names the winning answer's votes
    page.select_option("#selector", "majority")
    bon = run_and_capture(page)["bon"]
    winner = bon["candidates"][bon["chosen"][0]]
    count = sum(c["answer"] == winner["answer"] for c in bon["candidates"])
    assert page.inner_text("#rule").startswith("Majority vote")
    assert f"given by {count} of 6" in page.inner_text("#rule")
    assert page.query_selector_all(".step") == []  # no verifier ran: plain text, no tints


# ------------------------------------------------------------- the scripted app


HOSTILE = (
    "<script>window.__pwned = 1</script>\n"
    "<b>bold?</b>\n"
    'The answer is <img src=x onerror="window.__pwned = 2">.'
)


def test_candidate_text_renders_as_text(page):
    app = app_with(ScriptedGenerator([HOSTILE, "= 5\nThe answer is 5."]), ScriptedPRM())
    with served(app) as port:
        page.goto(f"http://127.0.0.1:{port}/ui")
        page.fill("#prompt", "What is 2 + 3?")
        for selector in ("verifier", "majority"):  # as tinted steps, and as plain text
            page.select_option("#selector", selector)
            run_and_capture(page)
            page.wait_for_timeout(200)  # an onerror would fire by now
            assert page.evaluate("window.__pwned") is None
            assert page.query_selector_all("#result img, #result script, #result b") == []
            text = page.inner_text(".candidate[data-index='0']")
            assert "<script>window.__pwned = 1</script>" in text and "<b>bold?</b>" in text
            assert '<img src=x onerror="window.__pwned = 2">' in page.inner_text("#result")


def test_the_key_prompt_and_the_key_going_only_here(page):
    app = app_with(ScriptedGenerator(), api_keys=(KEY,), world="arith")
    sent: list[tuple[str, str | None]] = []
    page.on("request", lambda r: sent.append((r.url, r.headers.get("authorization"))))
    with served(app) as port:
        origin = f"http://127.0.0.1:{port}"
        page.goto(f"{origin}/ui")
        page.wait_for_selector("#key-panel:not([hidden])")
        assert page.is_hidden("#main")

        page.fill("#api-key", "sk-wrong")
        page.click("#key-submit")
        expect(page.locator("#key-error")).to_contain_text("not accepted")
        assert page.is_hidden("#main")

        page.fill("#api-key", KEY)
        page.click("#key-submit")
        page.wait_for_selector("#main:not([hidden])")
        page.click("#new-problem")
        expect(page.locator("#prompt")).not_to_have_value("")
        body = run_and_capture(page)
        assert len(body["bon"]["candidates"]) == 8  # the page's default best_of

        # a reload keeps the key for this tab (sessionStorage), and asks for nothing
        page.reload()
        page.wait_for_selector("#main:not([hidden])")

    assert sent and all(urlsplit(url).netloc == f"127.0.0.1:{port}" for url, _ in sent)
    api = [(url, auth) for url, auth in sent if "/v1/" in url]
    assert f"Bearer {KEY}" in {auth for _, auth in api}
    # the key goes to the API only, and the wrong key never again once replaced
    keyed = [url for url, auth in sent if auth == f"Bearer {KEY}"]
    assert all("/v1/" in url for url in keyed), keyed
    assert json.dumps(sent).count("sk-wrong") == 1


# ------------------------------------------------------------- the load tester's report


def test_the_load_test_report_opens_from_disk(page, tmp_path: Path):
    from loadtest.cli import main as loadtest_main

    name = "<i>mine</i>"  # an endpoint name is the user's text: escaped like any other
    app = app_with(ScriptedGenerator(["= 5\nThe answer is 5."]))
    with served(app) as port, ThreadPoolExecutor(1) as pool:
        # in a thread: Playwright's sync API holds this thread's event loop
        code = pool.submit(loadtest_main, [
            "run", "--base-url", f"http://127.0.0.1:{port}", "--name", name,
            "--best-of", "1,4", "--concurrency", "1,2", "--requests", "4", "--warmup", "0",
            "--out", str(tmp_path), "--no-progress",
        ]).result()
    assert code == 0
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.goto((tmp_path / "report.html").as_uri())
    rows = page.query_selector_all("tbody tr")
    assert len(rows) == 4  # best_of 1 and 4, concurrency 1 and 2
    assert [r.query_selector("td").inner_text() for r in rows] == [name] * 4
    assert page.query_selector_all("i") == []
    images = page.query_selector_all("img")
    assert len(images) == 3
    assert all(img.evaluate("i => i.complete && i.naturalWidth > 0") for img in images)
    assert all(url.startswith(("file:", "data:")) for url in requested), requested
