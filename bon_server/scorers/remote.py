"""Remote verifier: the model runs on a vLLM pooling server; the text is laid out here.

``bon-server serve --verifier PATH --verifier-url http://verifier:8000`` scores through
vLLM (``vllm serve PATH --runner pooling``): an ORM through ``POST /classify``, a PRM
through ``POST /pooling`` with ``task: token_classify``. All candidates of a request go
in one call (at most ``--verifier-batch-size`` per call, the rest in parallel calls);
vLLM batches concurrent calls itself.

Why ``--verifier`` is still needed: what a verifier reads must be exactly what it was
trained on, and that is decided by ``format_for_orm`` and ``steps.encode_steps`` (the
one step formatter) with the verifier's own tokenizer and chat template. So this module
loads the tokenizer and ``config.json`` from ``--verifier`` (no weights), renders and
tokenizes each candidate locally, truncates from the left as the in-process scorers do,
and sends TOKEN IDS. The server then has nothing left to decide (no template, no special
tokens, no truncation), and a PRM's step positions are known here, where they are read.
The in-process and remote scores of the same model agree to float precision (tested).

Scores: an ORM's ``probs`` are its sigmoid (1 label) or softmax (2 labels), probability
of label 1; a PRM's rows are the softmax of the two-class token head, probability of
label 1 at each step tag. A vLLM ``STEP`` pooler that returns only the tag rows is
recognised by the row count. Only ``classify``-head step formats (``bon``, ``qwen``)
can be scored remotely: the ``plus_minus`` ones (Math-Shepherd, RLHFlow) read a causal
LM's logits, which vLLM's pooling API does not return.

Failures: an unreachable verifier is a 503, and a refused or malformed call (its 4xx
is our request's fault, never the client's) a 502. When one of a request's parallel
calls fails, its siblings are cancelled and that one failure is raised.

The chat template and the tokenizer run in a worker thread (as the in-process scorers'
forward passes do), one request at a time per scorer: a fast tokenizer used from two
threads at once, with truncation, fails ("Already borrowed").
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from ..concurrency import run_all
from ..errors import UpstreamError
from ..types import Candidate, Prompt
from ..upstream_client import ModelResolver, RemoteServer
from .base import aggregate, check_aggregation
from .orm import format_for_orm
from .prm import QWEN_PRM_ARCHITECTURE, detect_format
from .steps import (
    DEFAULT_SEPARATOR,
    StepFormat,
    check_format,
    encode_steps,
    resolve_separator,
    split_steps,
    tag_token_id,
)

if TYPE_CHECKING:
    import httpx

    from ..config import Settings

Encoded = tuple[list[int], list[int]]  # token ids, positions where step scores are read
T = TypeVar("T")


def verifier_server(
    settings: Settings, transport: httpx.AsyncBaseTransport | None = None
) -> RemoteServer:
    """The pooling server's root URL: ``/classify`` and ``/pooling`` are not under ``/v1``."""
    assert settings.verifier_url is not None
    root = settings.verifier_url.rstrip("/").removesuffix("/v1")
    return RemoteServer.from_settings(
        settings, root, name="verifier", api_key=settings.verifier_api_key, transport=transport
    )


class _RemoteScorer:
    """What the ORM and PRM share: the server, the model name, the context limit."""

    kind: str

    def __init__(
        self, remote: RemoteServer, *, model: str | None, max_length: int, batch_size: int
    ) -> None:
        self.remote = remote
        self.models = ModelResolver(remote, model, path="/v1/models")
        self.max_length = max_length
        self.batch_size = batch_size
        self._tokenizer_lock = threading.Lock()  # one thread at a time in the tokenizer

    async def _off_loop(self, fn: Callable[[], T]) -> T:
        """``fn()`` (template rendering, tokenization) in a worker thread, not the loop."""

        def locked() -> T:
            with self._tokenizer_lock:
                return fn()

        return await asyncio.to_thread(locked)

    async def _limit(self) -> int:
        """The shorter of the model's context and the server's ``--max-model-len``."""
        await self.models.resolve()
        served = (self.models.card or {}).get("max_model_len")
        return min(self.max_length, served) if isinstance(served, int) else self.max_length

    async def _rows(self, path: str, inputs: list[list[int]], extra: dict[str, Any]) -> list[Any]:
        """One call per ``batch_size`` inputs, in parallel; each input's ``data`` entry."""
        model = await self.models.resolve()

        async def call(chunk: list[list[int]]) -> list[Any]:
            body = {"model": model, "input": chunk, "use_activation": True, **extra}
            reply = await self.remote.post(path, body, relay_4xx=False)
            try:
                data = sorted(reply["data"], key=lambda d: d["index"])
            except (KeyError, TypeError, AttributeError) as exc:
                raise UpstreamError(f"verifier reply has no data: {exc!r}") from None
            if len(data) != len(chunk):
                raise UpstreamError(f"verifier scored {len(data)} of {len(chunk)} inputs")
            return data

        chunks = [inputs[i : i + self.batch_size] for i in range(0, len(inputs), self.batch_size)]
        # The first failure cancels the sibling calls still running (their connections close,
        # so vLLM aborts them) instead of leaving them to run on.
        rows = await run_all([partial(call, c) for c in chunks])
        return [row for chunk_rows in rows for row in chunk_rows]

    async def check_health(self) -> None:
        await self.models.check()

    async def aclose(self) -> None:
        await self.remote.aclose()


def _load_tokenizer(path: str, trust_remote_code: bool = False) -> tuple[Any, dict[str, Any]]:
    """The verifier's tokenizer and raw config.json: no weights, no model code."""
    from transformers import AutoTokenizer, PretrainedConfig

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    config = PretrainedConfig.get_config_dict(path)[0]
    return tokenizer, config


def _context(config: dict[str, Any]) -> int:
    return int(config.get("max_position_embeddings") or 4096)


class RemoteORMScorer(_RemoteScorer):
    kind = "orm"

    def __init__(
        self,
        remote: RemoteServer,
        tokenizer: Any,
        num_labels: int,
        *,
        model: str | None = None,
        max_length: int = 4096,
        batch_size: int = 64,
    ) -> None:
        if num_labels not in (1, 2):
            raise ValueError(f"an ORM head needs 1 or 2 labels, this one has {num_labels}")
        super().__init__(remote, model=model, max_length=max_length, batch_size=batch_size)
        self.tokenizer = tokenizer
        self.num_labels = num_labels

    @classmethod
    def from_settings(
        cls, settings: Settings, transport: httpx.AsyncBaseTransport | None = None
    ) -> RemoteORMScorer:
        assert settings.verifier is not None
        tokenizer, config = _load_tokenizer(settings.verifier)
        tokenizer.truncation_side = "left"  # as ORMScorer: the answer is at the end, keep it
        return cls(
            verifier_server(settings, transport),
            tokenizer,
            int(config.get("num_labels") or len(config.get("id2label") or {}) or 2),
            model=settings.verifier_model,
            max_length=_context(config),
            batch_size=settings.verifier_batch_size,
        )

    def encode(
        self, prompt: Prompt, candidates: Sequence[Candidate], limit: int
    ) -> list[list[int]]:
        """What ``ORMScorer.score_texts`` feeds its model, one id list per candidate."""
        texts = [format_for_orm(self.tokenizer, prompt, c.text) for c in candidates]
        enc = self.tokenizer(texts, add_special_tokens=False, truncation=True, max_length=limit)
        return [list(ids) for ids in enc["input_ids"]]

    async def score(
        self, prompt: Prompt, candidates: Sequence[Candidate], aggregation: str | None = None
    ) -> list[float]:
        if not candidates:
            return []
        limit = await self._limit()
        inputs = await self._off_loop(lambda: self.encode(prompt, candidates, limit))
        rows = await self._rows("/classify", inputs, {})
        label = 0 if self.num_labels == 1 else 1
        try:
            return [float(row["probs"][label]) for row in rows]
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise UpstreamError(f"verifier returned no class probabilities: {exc!r}") from None


def _check_head(fmt: StepFormat) -> None:
    if fmt.head != "classify":
        raise ValueError(
            f"step format {fmt.name!r} reads a causal LM's logits, which a vLLM pooling "
            "server does not return; score it in-process (drop --verifier-url)"
        )


class RemotePRMScorer(_RemoteScorer):
    kind = "prm"

    def __init__(
        self,
        remote: RemoteServer,
        tokenizer: Any,
        fmt: StepFormat,
        *,
        aggregation: str = "min",
        model: str | None = None,
        max_length: int = 4096,
        batch_size: int = 64,
        step_separator: str = DEFAULT_SEPARATOR,
    ) -> None:
        _check_head(fmt)
        super().__init__(remote, model=model, max_length=max_length, batch_size=batch_size)
        self.aggregation = check_aggregation(aggregation)
        self.tokenizer = tokenizer
        self.fmt = fmt
        self.tag_id = tag_token_id(fmt, tokenizer)
        self.step_separator = step_separator  # as in-process: split_steps cuts candidates

    @classmethod
    def from_settings(
        cls, settings: Settings, transport: httpx.AsyncBaseTransport | None = None
    ) -> RemotePRMScorer:
        assert settings.verifier is not None
        tokenizer, config = _load_tokenizer(settings.verifier, settings.verifier_trust_remote_code)
        step_format = settings.verifier_step_format
        fmt = detect_format(tokenizer) if step_format == "auto" else check_format(step_format)
        _check_head(fmt)
        architectures = config.get("architectures") or []
        if architectures and not any(
            a.endswith("ForTokenClassification") or a == QWEN_PRM_ARCHITECTURE
            for a in architectures
        ):
            raise ValueError(
                f"a remote PRM needs a token-classification model; {settings.verifier} is "
                f"{', '.join(architectures)}"
            )
        return cls(
            verifier_server(settings, transport),
            tokenizer,
            fmt,
            aggregation=settings.prm_aggregation,
            model=settings.verifier_model,
            max_length=_context(config),
            batch_size=settings.verifier_batch_size,
            step_separator=resolve_separator(settings.step_separator),
        )

    def encode(self, prompt: Prompt, text: str, limit: int) -> Encoded | None:
        """``encode_steps``'s ids and positions, truncated as ``PRMScorer`` truncates."""
        try:
            ids, positions = encode_steps(self.fmt, self.tokenizer, prompt,
                                        split_steps(text, self.step_separator))
        except ValueError:  # no steps, or a tag inside a step: nothing sound to score
            return None
        cut = len(ids) - limit
        if cut > 0:  # keep the end, where the steps being judged are
            ids, positions = ids[cut:], [p - cut for p in positions if p >= cut]
        return (list(ids), positions) if positions else None

    async def step_scores(
        self, prompt: Prompt, candidates: Sequence[Candidate]
    ) -> list[list[float]]:
        """Per-step scores of each candidate; [] where a candidate has nothing to score."""
        limit = await self._limit()
        encoded = await self._off_loop(
            lambda: [self.encode(prompt, c.text, limit) for c in candidates]
        )
        live = [e for e in encoded if e is not None]
        if not live:
            return [[] for _ in encoded]
        rows = await self._rows("/pooling", [ids for ids, _ in live], {"task": "token_classify"})
        scored = iter([self._read(e, row) for e, row in zip(live, rows, strict=True)])
        return [next(scored) if e is not None else [] for e in encoded]

    def _read(self, encoded: Encoded, row: dict[str, Any]) -> list[float]:
        ids, positions = encoded
        table = row.get("data") if isinstance(row, dict) else None
        if not isinstance(table, list):
            raise UpstreamError("verifier returned no token scores (is it a token classifier?)")
        if len(table) != len(ids):  # a STEP pooler: one row per tag token, in order
            tags = [i for i, t in enumerate(ids) if t == self.tag_id]
            if len(table) != len(tags):
                raise UpstreamError(
                    f"verifier returned {len(table)} token rows for {len(ids)} tokens"
                )
            where = {p: k for k, p in enumerate(tags)}
            positions = [where[p] for p in positions]
        try:
            return [float(table[p][1]) for p in positions]
        except (IndexError, KeyError, TypeError, ValueError) as exc:
            raise UpstreamError(f"verifier rows are not two-class probabilities: {exc!r}") from None

    async def score(
        self, prompt: Prompt, candidates: Sequence[Candidate], aggregation: str | None = None
    ) -> list[float]:
        how = check_aggregation(aggregation or self.aggregation)
        return [aggregate(s, how) for s in await self.step_scores(prompt, candidates)]
