"""Remake the README's two screenshots: ``docs/ui.png`` and ``docs/report.png``.

    .venv/bin/python docs/screenshots.py

Starts ``bon-server`` on the embedded arithmetic policy with the tests' tiny random-weight
PRM as its verifier, its score head scaled up so that its (meaningless) step scores spread
over 0..1 and the tints show (the step scores are noise: the page is what is shown), picks
the first seeded problem on which 8 candidates split their votes, runs best_of 8 with the verifier
selector and photographs ``/ui``; then
runs a small load test against the same server with majority voting and photographs its
``report.html``. Uses Debian's Chromium, as the browser tests do (``make test`` installs it).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from upstream_servers import build_tiny_prm  # noqa: E402  (the tests' tiny PRM)

from loadtest.cli import main as loadtest_main  # noqa: E402

PORT = 8765
BASE = f"http://127.0.0.1:{PORT}"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def wait_healthy(proc: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("bon-server exited")
        try:
            if httpx.get(f"{BASE}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("bon-server did not come up")


def noisy(path: Path) -> Path:
    """Point the random PRM's score head along the direction in which its hidden states at
    step tags vary most (on a few arithmetic solutions), so that its meaningless step scores
    spread over 0..1 instead of all sitting at one value."""
    import torch
    from transformers import AutoTokenizer, LlamaForTokenClassification

    from bon_server.scorers.steps import STEP_FORMATS, format_steps, split_steps
    from bon_server.types import Message, Prompt

    model = LlamaForTokenClassification.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    tag = tokenizer.convert_tokens_to_ids("<|step|>")
    prompt = Prompt(messages=(Message("user", "What is 10 * 25 * 13 * 27?"),))
    hidden = []
    for text in ("10 * 25 = 250\n250 * 13 = 3250\n3250 * 27 = 87750\nThe answer is 87750.",
                 "12 - 7 = 5\n5 * 3 = 16\nThe answer is 16.", "9 + 9 = 18\nThe answer is 18."):
        laid_out = format_steps(STEP_FORMATS["bon"], tokenizer, prompt, split_steps(text))
        ids = tokenizer.encode(laid_out, add_special_tokens=False)
        with torch.no_grad():
            states = model.model(input_ids=torch.tensor([ids])).last_hidden_state[0]
        hidden.append(states[[i for i, t in enumerate(ids) if t == tag]])
    states = torch.cat(hidden)
    mean = states.mean(0)
    direction = torch.linalg.svd(states - mean, full_matrices=False).Vh[0]
    direction -= (direction @ mean) / (mean @ mean) * mean  # no constant offset
    with torch.no_grad():
        model.score.weight.zero_()
        if model.score.bias is not None:
            model.score.bias.zero_()
        model.score.weight[1] = 3.0 * direction / (states - mean).matmul(direction).std()
    model.save_pretrained(path)
    return path


def disputed_problem() -> str:
    """The first seeded problem on which 8 candidates split: 3 to 6 votes for the most
    common answer, the rest elsewhere (a vote worth looking at)."""
    for seed in range(100):
        prompt = httpx.get(f"{BASE}/v1/bon/problem?seed={seed}").json()["prompt"]
        body = {"messages": [{"role": "user", "content": prompt}], "best_of": 8, "seed": 1,
                "selector": "majority", "return_candidates": True}
        bon = httpx.post(f"{BASE}/v1/chat/completions", json=body, timeout=60).json()["bon"]
        top = Counter(c["answer"] for c in bon["candidates"]).most_common(1)[0][1]
        if 3 <= top <= 6:
            return prompt
    raise SystemExit("no disputed problem in 100 seeds")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        prm = noisy(build_tiny_prm(Path(tmp) / "tiny-prm"))
        cmd = [sys.executable, "-m", "bon_server", "serve", "--port", str(PORT),
               # not the default policy: these pictures show the arithmetic PRM's step scores
               "--model", "bon_server/embedded/arith-policy",
               "--verifier", str(prm), "--verifier-kind", "prm", "--verifier-dtype", "float32",
               "--default-selector", "majority"]
        server = subprocess.Popen(cmd)
        try:
            wait_healthy(server)
            out = Path(tmp) / "loadtest"
            code = loadtest_main([
                "run", "--base-url", BASE, "--best-of", "1,4,16", "--concurrency", "1,4",
                "--requests", "24", "--selector", "majority", "--out", str(out),
                "--no-progress",
            ])
            if code != 0:
                raise SystemExit("the load test had failures")
            prompt = disputed_problem()
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(f"{BASE}/ui")
                page.wait_for_selector("#main:not([hidden])")
                page.fill("#prompt", prompt)
                page.fill("#best-of", "8")
                page.select_option("#selector", "verifier")
                page.fill("#seed", "1")
                page.click("#run")
                page.wait_for_selector(".candidate")
                page.screenshot(path=str(ROOT / "docs" / "ui.png"), full_page=True)
                page.goto((out / "report.html").as_uri())
                page.screenshot(path=str(ROOT / "docs" / "report.png"), full_page=True)
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=60)
    print("wrote docs/ui.png, docs/report.png")


if __name__ == "__main__":
    main()
