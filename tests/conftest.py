"""Shared fixtures: the real server, started once per session in a subprocess.

``bon_server`` runs ``python -m bon_server serve`` (the real CLI, real uvicorn,
real in-process vLLM engine) on the embedded arithmetic policy (not the default,
paths-policy) with a tiny ORM
that this file builds (random weights: its scores are arbitrary but real), and
yields its base URL. Tests talk to it with the official ``openai`` SDK or httpx.

Also shared by the engine suites: ``wait_for`` (poll a condition), ``assert_aborted``
(what only an abort in the engine explains), ``started`` (a ``ChildProcess`` for the length
of a ``with``), and the chat helpers ``MODEL``, ``Q``, ``chat`` and ``rendered``. By the
training suites: ``cli`` (a ``verifier_training`` command in its own process group), ``rows``
and ``arith_records``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 300
# The suites serve the arithmetic policy (its questions are the shortest to check), not
# bon-server's default (paths-policy): Settings() and every server subprocess read BON_MODEL.
# A test of the default itself removes it (monkeypatch.delenv).
ARITH_POLICY = str(ROOT / "bon_server" / "embedded" / "arith-policy")
os.environ["BON_MODEL"] = ARITH_POLICY
MODEL = "arith-policy"  # its served model name
Q = "What is 17 + 4 * 23 - 9?"


def chat(client, content=Q, **kwargs):
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": content}], **kwargs
    )


def top_three_of_eight(client):  # type: ignore[no-untyped-def]
    """n=3 of best_of=8 chosen by the verifier, every candidate returned: the top three by
    score, in order (ties by index), each choice the text of the candidate it names. The
    checks an in-process and a proxied server share; the response, for more."""
    r = chat(client, n=3, seed=7, max_tokens=128,
             extra_body={"best_of": 8, "selector": "verifier", "return_candidates": True})
    bon = r.bon
    assert len(r.choices) == 3 and bon["best_of"] == 8 and bon["selector"] == "verifier"
    assert len(bon["candidates"]) == 8 and len(bon["scores"]) == 8
    ranked = sorted(range(8), key=lambda i: (-bon["scores"][i], i))
    assert bon["chosen"] == ranked[:3]
    for rank, choice in enumerate(r.choices):
        assert choice.index == rank
        assert choice.message.content == bon["candidates"][bon["chosen"][rank]]["text"]
    return r


def logprob_selected(client):  # type: ignore[no-untyped-def]
    """Four candidates chosen by their mean logprob, with two top logprobs per token returned:
    the checks an in-process and a proxied server share. The response, for more."""
    r = chat(client, seed=5, max_tokens=64, logprobs=True, top_logprobs=2,
             extra_body={"best_of": 4, "selector": "logprob"})
    content = r.choices[0].logprobs.content
    assert "".join(t.token for t in content) == r.choices[0].message.content
    assert all(len(t.top_logprobs) == 2 for t in content)
    assert r.choices[0].score < 0 and r.choices[0].score == max(r.bon["scores"])
    return r


def rendered(question: str) -> str:
    """The policy's chat template, written out for /v1/completions."""
    return f"<|bos|><|user|>{question}<|end|><|assistant|>"


@pytest.fixture(autouse=True)
def only_the_worlds_registered() -> Iterator[None]:
    """A dataset a test loads registers itself in ``bon_server.tasks.TASKS`` (as it would for
    the rest of a command's process): forget it after the test, so that no other test meets
    it among the worlds."""
    from bon_server import tasks

    yield
    for name in set(tasks.TASKS) - set(tasks.WORLDS):
        del tasks.TASKS[name]
    tasks._parsed.cache_clear()


def wait_for(predicate: Callable[[], bool], timeout_s: float = 60.0) -> bool:
    """Poll ``predicate`` every 0.05 s until it holds (True) or ``timeout_s`` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


# A request that only an abort stops early: every candidate runs to max_tokens (ignore_eos),
# about 7 s of the engine's work on the 2-core machine, far past ABORT_WINDOW_S.
LONG_REQUEST = {"best_of": 64, "max_tokens": 460, "ignore_eos": True}
LONG_REQUEST_TOKENS = 64 * 460  # what it generates if nothing aborts it
ABORT_WINDOW_S = 2.0


def assert_aborted(
    generated: Callable[[], float],
    unfinished: Callable[[], float],
    before: float,
    budget: float = LONG_REQUEST_TOKENS,
) -> None:
    """What only an abort explains, for a ``LONG_REQUEST`` that was disconnected or timed out:
    within ``ABORT_WINDOW_S`` the engine holds nothing (``unfinished`` is 0) and its own
    generated-token counter (``generated``: vLLM's ``vllm:generation_tokens_total``) stops,
    having grown since ``before`` by less than the request (or the part of it under way,
    ``budget`` tokens) costs when it runs to the end."""
    assert wait_for(lambda: unfinished() == 0, ABORT_WINDOW_S), (
        f"the engine still holds {unfinished():g} sequences {ABORT_WINDOW_S} s later"
    )
    deadline = time.monotonic() + ABORT_WINDOW_S
    last = generated()
    while True:  # a step already running in the engine may still report a few tokens
        time.sleep(0.5)
        now = generated()
        if now == last:
            break
        assert time.monotonic() < deadline, f"the engine keeps generating: {last:g} -> {now:g}"
        last = now
    assert now - before < budget, f"{now - before:g} tokens generated: the request ran to its end"


def pruned_long_request(base_url: str, running: Callable[[], float]) -> dict[str, Any]:
    """POST sixteen candidates of 460 tokens each (ignore_eos), pruned to eight after the
    first step, to the bon-server at ``base_url``; ``running`` (the engine's running count)
    must reach 8 on the way. The response, checked for what pruning says happened."""
    import concurrent.futures

    body = {"model": MODEL, "messages": [{"role": "user", "content": Q}], **LONG_REQUEST,
            "best_of": 16, "prune": True, "selector": "verifier", "return_candidates": True}
    seen: list[float] = []
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(httpx.post, f"{base_url}/v1/chat/completions", json=body,
                             timeout=300)
        # all sixteen run only until the first step (a moment a loaded machine's scrapes can
        # miss); the eight survivors then run for seconds
        assert wait_for(lambda: seen.append(running()) or seen[-1] == 8)
        r = future.result()
    assert r.status_code == 200, r.text
    out = r.json()
    search, cands = out["bon"]["search"], out["bon"]["candidates"]
    assert search["candidates_pruned"] == 8 and search["candidates_finished"] == 8
    pruned = [c for c in cands if c["state"] == "pruned"]
    assert all(0 < c["completion_tokens"] < 460 for c in pruned)  # started, then stopped
    assert all(c["completion_tokens"] == 460 for c in cands if c["state"] == "finished")
    assert out["usage"]["completion_tokens"] == sum(c["completion_tokens"] for c in cands)
    assert out["usage"]["prompt_tokens"] > 0
    return out


def send_long_chat(port: int, **extra: Any) -> socket.socket:
    """A ``LONG_REQUEST`` chat sent over a raw socket (so the test can hang up mid-request);
    the caller closes the returned socket."""
    body = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": Q}], **LONG_REQUEST, **extra}
    ).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )
    return sock


CLI_TIMEOUT_S = 540


def cli(*args: str, log: Path) -> int:
    """``python -m verifier_training ARGS`` from the repository root; its output in ``log``
    (the tail printed on failure). Past ``CLI_TIMEOUT_S`` the test fails and the command's whole
    process group is killed (its vLLM engine processes too, which would outlive a killed
    parent)."""
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "verifier_training", *args], stdout=f,
                                stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        try:
            code = proc.wait(timeout=CLI_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"{args[0]} did not finish in {CLI_TIMEOUT_S} s:\n"
                        f"{log.read_text()[-4000:]}")
    if code:
        print(log.read_text()[-4000:])
    return code


def rows(path: Path) -> list[dict]:
    """A JSONL file's rows."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def arith_records() -> tuple[list[Any], list[Any]]:
    """SampleRecords and their StepLabelRecords for the trainer tests: 12 problems
    ``a + b * c`` x 3 candidates, the right one, one with a wrong middle step (every later step
    bad) and one with a wrong last step."""
    from verifier_training.data.records import SampleRecord, StepLabelRecord

    rng = random.Random(0)
    samples, labels = [], []
    for p in range(12):
        a, b, c = rng.randint(1, 9), rng.randint(1, 9), rng.randint(1, 9)
        for k, (mid_off, end_off) in enumerate([(0, 0), (1, 0), (0, 1)]):
            mid = b * c + mid_off
            ans = a + mid + end_off
            text = f"= {a} + {mid}\n= {ans}\nThe answer is {ans}."
            ok = ans == a + b * c
            common = dict(problem_id=f"train-1-{p:05d}", sample_index=k,
                          question=f"What is {a} + {b} * {c}?", reference=str(a + b * c),
                          correct=ok, policy="tiny", seed=p)
            samples.append(SampleRecord(completion=text, answer=None, temperature=1.0, top_p=1.0,
                                        max_tokens=64, finish_reason="stop",
                                        completion_tokens=len(text), **common))
            counts = (4, 4, 4) if ok else (0, 0, 0) if mid_off else (4, 1, 0)
            labels.append(StepLabelRecord(steps=tuple(text.split("\n")), counts=counts,
                                          rollouts=4, inferred=(False,) * 3, **common))
    return samples, labels


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_tiny_orm(path: Path, num_labels: int = 1, seed: int = 0) -> Path:
    """A randomly initialised LlamaForSequenceClassification with the project's tokenizer."""
    from tiny_models import save_tiny
    from transformers import LlamaForSequenceClassification

    from verifier_training.train.tokenizer import build_tokenizer

    return save_tiny(
        LlamaForSequenceClassification, path, build_tokenizer(), seed, num_labels=num_labels
    )


class ChildProcess:
    """A server in a subprocess, its output in a log file: started, awaited, stopped.

    ``ready_url`` is polled until ``accept(response)``; a process that exits first, or
    never gets there, fails with the tail of its log.
    """

    name = "process"
    ready_url = ""

    def __init__(self, cmd: list[str], log_path: Path, **env: str) -> None:
        self.log_path = log_path
        env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", OMP_WAIT_POLICY="PASSIVE",
                   PYTHONUNBUFFERED="1", **env)
        self.log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(
        self,
        timeout_s: float = STARTUP_TIMEOUT_S,
        accept: Callable[[httpx.Response], bool] = lambda r: r.status_code == 200,
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.tail()}")
            try:
                if accept(httpx.get(self.ready_url, timeout=10)):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        log = self.tail()  # before stop() closes the log file
        self.stop()
        raise RuntimeError(f"{self.name} did not come up:\n{log}")

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 60) -> str:
        if not self.log.closed:
            self.log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.log.closed:
            self.log.close()


class ServerProcess(ChildProcess):
    """``python -m bon_server serve ARGS`` on a free port; ready when /health is 200."""

    name = "bon-server"

    PORT_TRIES = 3

    def __init__(self, args: list[str], log_path: Path, **env: str) -> None:
        self.args, self.env = args, env
        self._start(log_path)

    def _start(self, log_path: Path) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.ready_url = f"{self.base_url}/health"
        cmd = [sys.executable, "-m", "bon_server", "serve", "--port", str(self.port), *self.args]
        super().__init__(cmd, log_path, **self.env)

    def wait_ready(self, *args: Any, **kwargs: Any) -> None:
        """As ``ChildProcess.wait_ready``, on a fresh port if another process took this one
        between ``free_port()`` and the server's bind (a port is free only when asked)."""
        for attempt in range(self.PORT_TRIES):
            try:
                return super().wait_ready(*args, **kwargs)
            except RuntimeError:
                log = self.log_path.read_text(errors="replace").lower()
                taken = "address already in use" in log
                if not taken or attempt == self.PORT_TRIES - 1:
                    raise
                self.stop()
                self._start(self.log_path)

    def metric(self, name: str) -> float:
        """The first sample of ``name`` on /metrics."""
        text = httpx.get(f"{self.base_url}/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        raise KeyError(name)


P = TypeVar("P", bound=ChildProcess)


@contextlib.contextmanager
def started(proc: P, **wait: Any) -> Iterator[P]:
    """Wait for ``proc`` to be ready (``wait``: ``wait_ready``'s arguments), hand it out,
    stop it afterwards (also on failure)."""
    try:
        proc.wait_ready(**wait)
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def tiny_orm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_orm(tmp_path_factory.mktemp("models") / "tiny-orm")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_orm: Path) -> Iterator[ServerProcess]:
    """The embedded policy on real vLLM, with the tiny ORM as verifier."""
    log_path = tmp_path_factory.mktemp("logs") / "server.log"
    args = ["--verifier", str(tiny_orm), "--keepalive-interval-s", "0.05", "--max-best-of", "64"]
    with started(ServerProcess(args, log_path)) as proc:
        yield proc


@pytest.fixture(scope="session")
def client(server: ServerProcess):  # type: ignore[no-untyped-def]
    from openai import OpenAI

    with OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0) as c:
        yield c


PRM_AGGREGATION = "last"  # the PRM server's --prm-aggregation: not the server's default (min)


@pytest.fixture(scope="session")
def prm_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from upstream_servers import build_tiny_prm

    return build_tiny_prm(tmp_path_factory.mktemp("models") / "tiny-prm")


@pytest.fixture(scope="session")
def prm_server(tmp_path_factory: pytest.TempPathFactory, prm_path: Path) -> Iterator[ServerProcess]:
    """The embedded policy on real vLLM with a tiny random-weight PRM (``<|step|>`` tags) in
    transformers: ``test_prm_server.py`` and the page's browser tests."""
    log_path = tmp_path_factory.mktemp("logs") / "prm-server.log"
    args = [
        "--verifier", str(prm_path), "--verifier-kind", "prm",
        "--prm-aggregation", PRM_AGGREGATION, "--verifier-dtype", "float32",
    ]
    with started(ServerProcess(args, log_path)) as proc:
        yield proc
