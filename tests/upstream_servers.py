"""Real vLLM OpenAI servers on loopback, for the proxy-mode tests (started once per run).

``vllm_servers(config, tmp_path_factory)`` starts, in parallel, the embedded policy
(generation) and a tiny ORM and a tiny PRM (``--runner pooling``), each with
``python -m vllm.entrypoints.openai.api_server``, and returns them; later calls, from
any test module, get the same processes. They stop when pytest ends (``add_cleanup``),
or earlier when a test kills one (``VLLMServer.stop``). The bon-servers in front of
them are conftest's ``ServerProcess`` (``python -m bon_server serve``).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import MODEL, ROOT, ChildProcess, build_tiny_orm, free_port
from tiny_models import save_tiny, step_tokenizer

POLICY = ROOT / "bon_server" / "embedded" / "arith-policy"
# Small and CPU-friendly: no chunked prefill (seeded requests crash the CPU sampler with
# it, see ENVIRONMENT.md), no torch.compile (saves most of the start), vLLM's own sampling
# defaults (as in-process), float32 so remote and in-process verifier scores can agree.
COMMON = ["--host", "127.0.0.1", "--max-model-len", "512", "--enforce-eager"]


class VLLMServer(ChildProcess):
    """``python -m vllm.entrypoints.openai.api_server`` on a free port; ready at /v1/models."""

    def __init__(self, name: str, model: Path, args: list[str], log_dir: Path) -> None:
        self.name = f"vLLM {name}"
        self.model = model
        self.port = free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.root}/v1"
        self.ready_url = f"{self.base_url}/models"
        cmd = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(model),
            "--served-model-name",
            MODEL if name == "policy" else name,
            "--port",
            str(self.port),
            *COMMON,
            *args,
        ]
        super().__init__(cmd, log_dir / f"vllm-{name}.log")

    def metric(self, name: str) -> float:
        """Sum of a Prometheus gauge over its label sets (vLLM labels by engine and model)."""
        text = httpx.get(f"{self.root}/metrics", timeout=5).text
        values = [
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name + "{") or line.startswith(name + " ")
        ]
        if not values:
            raise KeyError(name)
        return sum(values)


def build_tiny_prm(path: Path, seed: int = 0) -> Path:
    """A two-class LlamaForTokenClassification whose tokenizer has the ``<|step|>`` tag."""
    from transformers import LlamaForTokenClassification

    from verifier_training.train.tokenizer import save_tokenizer

    tok = step_tokenizer("bon")
    save_tiny(LlamaForTokenClassification, path, tok, seed, num_labels=2)
    save_tokenizer(tok, str(path))  # keeps the chat template file
    return path


_SERVERS: dict[str, VLLMServer] = {}
_WORKDIR: list[Path] = []


def workdir(config: pytest.Config) -> Path:
    """A private directory for models and logs, removed when pytest ends.

    Not ``tmp_path_factory``: another pytest session on the machine rotates those
    directories away (it keeps three), and the servers read their models from here.
    """
    if not _WORKDIR:
        path = Path(tempfile.mkdtemp(prefix="bon-upstream-"))
        config.add_cleanup(lambda: shutil.rmtree(path, ignore_errors=True))
        _WORKDIR.append(path)
    return _WORKDIR[0]


def vllm_servers(config: pytest.Config) -> dict[str, VLLMServer]:
    """The policy, ORM and PRM servers, started together on first use."""
    wanted = {"policy", "orm", "prm"}
    if {k for k, s in _SERVERS.items() if s.alive} == wanted:
        return _SERVERS
    models = workdir(config) / "models"
    logs = workdir(config) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    specs: dict[str, tuple[Path, list[str]]] = {
        "policy": (POLICY, ["--no-enable-chunked-prefill", "--generation-config", "vllm"]),
        "orm": (
            _built(models / "orm", build_tiny_orm),
            ["--runner", "pooling", "--dtype", "float32"],
        ),
        "prm": (
            _built(models / "prm", build_tiny_prm),
            ["--runner", "pooling", "--dtype", "float32"],
        ),
    }
    started = []
    for name, (model, args) in specs.items():
        if name in _SERVERS and _SERVERS[name].alive:
            continue
        server = VLLMServer(name, model, args, logs)
        config.add_cleanup(server.stop)
        _SERVERS[name] = server
        started.append(server)
    for server in started:
        server.wait_ready()
    return _SERVERS


def _built(path: Path, build: Any) -> Path:
    return path if (path / "config.json").exists() else build(path)


def closed_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    return free_port()
