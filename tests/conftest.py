"""Shared fixtures: the real server, started once per session in a subprocess.

``bon_server`` runs ``python -m bon_server serve`` (the real CLI, real uvicorn,
real in-process vLLM engine) on the embedded arithmetic policy with a tiny ORM
that this file builds (random weights: its scores are arbitrary but real), and
yields its base URL. Tests talk to it with the official ``openai`` SDK or httpx.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_tiny_orm(path: Path, num_labels: int = 1, seed: int = 0) -> Path:
    """A randomly initialised LlamaForSequenceClassification with the project's tokenizer."""
    from tiny_models import save_tiny
    from transformers import LlamaForSequenceClassification

    from verifier_training.tokenizer import build_tokenizer

    return save_tiny(
        LlamaForSequenceClassification, path, build_tokenizer(), seed, num_labels=num_labels
    )


class ServerProcess:
    def __init__(self, args: list[str], log_path: Path) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", PYTHONUNBUFFERED="1")
        cmd = [sys.executable, "-m", "bon_server", "serve", "--port", str(self.port), *args]
        self.log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.tail()}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        log = self.tail()  # before stop() closes the log file
        self.stop()
        raise RuntimeError(f"server did not become healthy:\n{log}")

    def tail(self, lines: int = 60) -> str:
        if not self.log.closed:
            self.log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def metric(self, name: str) -> float:
        text = httpx.get(f"{self.base_url}/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        raise KeyError(name)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="session")
def tiny_orm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_orm(tmp_path_factory.mktemp("models") / "tiny-orm")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_orm: Path) -> Iterator[ServerProcess]:
    """The embedded policy on real vLLM, with the tiny ORM as verifier."""
    log_path = tmp_path_factory.mktemp("logs") / "server.log"
    proc = ServerProcess(
        ["--verifier", str(tiny_orm), "--keepalive-interval-s", "0.05", "--max-best-of", "64"],
        log_path,
    )
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def client(server: ServerProcess):  # type: ignore[no-untyped-def]
    from openai import OpenAI

    with OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0) as c:
        yield c
