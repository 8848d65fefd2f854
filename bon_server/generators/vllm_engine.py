"""In-process vLLM: one ``AsyncLLM`` engine, one engine request per Best-of-N request.

This module owns prompt rendering (the policy's chat template and tokenizer),
context-length checks and the translation of vLLM's outputs into ``Candidate``s.
It knows nothing of HTTP, scoring or selection.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ..context import request_id_var
from ..errors import BonError, InvalidRequestError, ServiceUnavailableError
from ..types import (
    Candidate,
    Extension,
    Generation,
    Piece,
    Progress,
    Prompt,
    SamplingParams,
    TokenLogprob,
)
from .base import PreparedRequest

if TYPE_CHECKING:
    from vllm.v1.engine.async_llm import AsyncLLM

    from ..config import Settings

log = logging.getLogger(__name__)


CPU_BLOCK_SIZE = 32  # the CPU backend wants a multiple of 32


@contextlib.contextmanager
def engine_errors() -> Iterator[None]:
    """The engine's exceptions as this server's: a dead engine is a 503, a request the engine
    refuses (its own validation) a 400. One mapping for generate, extend and stream."""
    from vllm.exceptions import VLLMClientError
    from vllm.v1.engine.exceptions import EngineDeadError

    try:
        yield
    except EngineDeadError as exc:
        raise ServiceUnavailableError(f"the engine is not running: {exc}") from exc
    except VLLMClientError as exc:
        raise InvalidRequestError(str(exc)) from exc


class VLLMGenerator:
    def __init__(self, engine: AsyncLLM, model_name: str, max_tokens_limit: int | None = None):
        self.engine = engine
        self.model_name = model_name
        self.tokenizer = engine.get_tokenizer()
        self.max_model_len: int = engine.model_config.max_model_len
        self.max_tokens_limit = max_tokens_limit
        self.vocab_size = len(self.tokenizer)
        self.special_ids = frozenset(self.tokenizer.all_special_ids)

    @classmethod
    def from_settings(cls, settings: Settings) -> VLLMGenerator:
        # vLLM reads these at import time; set them before the first import.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.kv_cache_gib))
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM
        from vllm.v1.metrics.loggers import PrometheusStatLogger

        from ..dtypes import resolve_engine_dtype

        args = AsyncEngineArgs(
            model=settings.model,
            tokenizer=settings.model,
            served_model_name=[settings.model_name],
            seed=settings.seed,
            dtype=resolve_engine_dtype(settings.dtype, what="policy engine"),
            max_model_len=settings.max_model_len,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            tensor_parallel_size=settings.tensor_parallel_size,
            enforce_eager=settings.enforce_eager,
            enable_prefix_caching=True,
            # Only whole blocks are cached: vLLM's CPU default (128 tokens) is longer than the
            # worlds' prompts, so the candidates of one best_of request each prefilled the
            # prompt again (0 prefix-cache hits for an 81-token Countdown prompt at n=16).
            block_size=settings.kv_block_size or (CPU_BLOCK_SIZE if current_platform.is_cpu()
                                                  else None),
            # On CPU, a seeded request whose prefill is split across steps kills the engine
            # ("CPU Generator does not use offset", vLLM 0.32): schedule whole prefills only.
            enable_chunked_prefill=False if current_platform.is_cpu() else None,
            # The model's generation_config must not silently change request defaults.
            generation_config="vllm",
            # no periodic stats lines in the log; vLLM's Prometheus metrics are still kept
            # (the stat logger below) and served on our /metrics
            disable_log_stats=True,
        )
        engine = AsyncLLM.from_engine_args(args, stat_loggers=[PrometheusStatLogger])
        return cls(engine, settings.model_name, settings.max_tokens_limit)

    # ------------------------------------------------------------------ prepare

    def render(self, prompt: Prompt) -> list[int]:
        if prompt.token_ids is not None:
            bad = [t for t in prompt.token_ids if not 0 <= t < self.vocab_size]
            if bad:
                raise InvalidRequestError(
                    f"token id {bad[0]} is out of range [0, {self.vocab_size})", param="prompt"
                )
            return list(prompt.token_ids)
        if prompt.messages is not None:
            if not getattr(self.tokenizer, "chat_template", None):
                raise InvalidRequestError(
                    f"model {self.model_name!r} has no chat template; use /v1/completions",
                    param="messages",
                )
            messages = [{"role": m.role, "content": m.content} for m in prompt.messages]
            try:
                text = self.tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=True
                )
            except Exception as exc:  # jinja raise_exception and friends: the client's doing
                raise InvalidRequestError(
                    f"messages cannot be rendered: {exc}", param="messages"
                ) from None
            return self.tokenizer.encode(text, add_special_tokens=False)
        return self.tokenizer.encode(prompt.text or "")

    def prepare(self, prompt: Prompt, params: SamplingParams, n: int) -> PreparedRequest:
        ids = self.render(prompt)
        if not ids:
            raise InvalidRequestError("prompt must not be empty", param="prompt")
        room = self.max_model_len - len(ids)
        if room <= 0:
            raise InvalidRequestError(
                f"This model's maximum context length is {self.max_model_len} tokens. "
                f"However, your request has {len(ids)} input tokens.",
                param="messages" if prompt.messages is not None else "prompt",
                code="context_length_exceeded",
            )
        max_tokens = params.max_tokens
        if max_tokens is None:
            max_tokens = min(room, self.max_tokens_limit or room)
        if self.max_tokens_limit is not None and max_tokens > self.max_tokens_limit:
            raise InvalidRequestError(
                f"max_tokens ({max_tokens}) exceeds this server's limit ({self.max_tokens_limit})",
                param="max_tokens",
            )
        if max_tokens > room:
            raise InvalidRequestError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"you requested {len(ids) + max_tokens} tokens ({len(ids)} in the messages, "
                f"{max_tokens} in the completion). Please reduce the length of the messages "
                "or completion.",
                param="max_tokens",
                code="context_length_exceeded",
            )
        bad_bias = [t for t, _ in params.logit_bias if not 0 <= t < self.vocab_size]
        if bad_bias:
            raise InvalidRequestError(
                f"logit_bias token id {bad_bias[0]} is out of range", param="logit_bias"
            )
        from vllm.exceptions import VLLMError

        try:
            engine_params = self._sampling_params(params, n, max_tokens)
        except (ValueError, VLLMError) as exc:  # vLLM's own parameter validation
            raise InvalidRequestError(str(exc)) from None
        return PreparedRequest(prompt, params, n, len(ids), payload=(ids, engine_params))

    # ----------------------------------------------------------------- generate

    def _sampling_params(
        self, p: SamplingParams, n: int, max_tokens: int, cumulative: bool = False,
        include_stop: bool = False,
    ) -> Any:
        from vllm import SamplingParams as VSamplingParams
        from vllm.sampling_params import RequestOutputKind

        kind = RequestOutputKind.CUMULATIVE if cumulative else RequestOutputKind.FINAL_ONLY
        return VSamplingParams(
            n=n,
            max_tokens=max_tokens,
            temperature=p.temperature,
            top_p=p.top_p,
            top_k=p.top_k,
            min_p=p.min_p,
            presence_penalty=p.presence_penalty,
            frequency_penalty=p.frequency_penalty,
            repetition_penalty=p.repetition_penalty,
            stop=list(p.stop) or None,
            seed=p.seed,
            logit_bias=dict(p.logit_bias) or None,
            logprobs=p.logprobs,
            ignore_eos=p.ignore_eos,
            include_stop_str_in_output=include_stop,
            # One yield holding all n candidates (the default may end on a partial one);
            # ``stream`` follows one candidate as it grows instead.
            output_kind=kind,
        )

    async def generate(self, request: PreparedRequest) -> Generation:
        ids, params = request.payload
        client_id = request_id_var.get()  # the client's X-Request-Id, for vLLM's own logs
        request_id = f"bon-{client_id or ''}-{uuid.uuid4().hex}"
        with engine_errors():
            outputs = await self._outputs(ids, params, request_id, request.n)
        candidates = []
        for out in outputs:
            candidates.append(
                Candidate(
                    text=out.text,
                    token_ids=tuple(out.token_ids),
                    cumulative_logprob=out.cumulative_logprob,
                    finish_reason=out.finish_reason,
                    logprobs=self._logprobs(out.token_ids, out.logprobs, request.params.logprobs),
                )
            )
        return Generation(tuple(candidates), prompt_tokens=len(ids))

    async def _outputs(self, ids: list[int], params: Any, request_id: str, n: int) -> list[Any]:
        """One FINAL_ONLY engine request's ``n`` outputs in index order, each ended by stop or
        length (the engine's exceptions pass through: the caller maps them)."""
        final = None
        async for output in self.engine.generate({"prompt_token_ids": ids}, params, request_id):
            final = output
        if final is None or len(final.outputs) != n:
            raise BonError("the engine returned an incomplete result")
        outputs = sorted(final.outputs, key=lambda o: o.index)
        for out in outputs:
            if out.finish_reason not in ("stop", "length"):
                raise ServiceUnavailableError(f"generation ended with {out.finish_reason!r}")
        return outputs

    async def extend(
        self, request: PreparedRequest, asks: Sequence[Extension], separator: str | None
    ) -> list[list[Piece]]:
        """Step search: for each ask, ``n`` continuations of the prompt plus its prefix, each
        ending at ``separator`` (kept in the text) or at its end (``separator`` None). All
        asks go to the engine at once, so they are scheduled together and share the prompt's
        cached blocks; cancelling the call aborts every one."""
        import asyncio

        ids, engine_params = request.payload
        client_stops = tuple(request.params.stop)
        client_id = request_id_var.get()

        async def one(ask: Extension) -> list[Piece]:
            p = dataclasses.replace(
                request.params, seed=ask.seed, logprobs=None,
                stop=client_stops + ((separator,) if separator else ()),
            )
            # the separator belongs to its step: kept in the text
            room = engine_params.max_tokens - len(ask.prefix)
            if room <= 0:  # the budget is spent: the beam ends where it is
                return [Piece("", (), 0.0, ended=True, finish_reason="length")] * ask.n
            params = self._sampling_params(p, ask.n, room, include_stop=True)
            request_id = f"bon-{client_id or ''}-{uuid.uuid4().hex}"
            pieces = []
            for out in await self._outputs(ids + list(ask.prefix), params, request_id, ask.n):
                text, stop = out.text, out.stop_reason
                at_separator = separator is not None and stop == separator
                if isinstance(stop, str) and not at_separator and text.endswith(stop):
                    text = text[: len(text) - len(stop)]  # a client's stop: not in the text
                pieces.append(Piece(text, tuple(out.token_ids), out.cumulative_logprob,
                                    ended=not at_separator, finish_reason=out.finish_reason))
            return pieces

        with engine_errors():
            return list(await asyncio.gather(*(one(a) for a in asks)))

    async def stream(self, request: PreparedRequest, index: int) -> AsyncIterator[Progress]:
        """Candidate ``index`` of ``request`` alone (its own engine request, n = 1, seeded
        ``seed + index`` where the client gave a seed), yielded as it grows. Closing or
        cancelling the iteration aborts it in the engine."""
        ids, engine_params = request.payload
        p = request.params
        if p.seed is not None:
            p = dataclasses.replace(p, seed=p.seed + index)
        one = self._sampling_params(p, 1, engine_params.max_tokens, cumulative=True)
        request_id = f"bon-{request_id_var.get() or ''}-{uuid.uuid4().hex}-{index}"
        with engine_errors():
            async for output in self.engine.generate({"prompt_token_ids": ids}, one, request_id):
                out = output.outputs[0]
                done = output.finished
                if done and out.finish_reason not in ("stop", "length"):
                    raise ServiceUnavailableError(f"generation ended with {out.finish_reason!r}")
                yield Progress(
                    Candidate(
                        text=out.text,
                        token_ids=tuple(out.token_ids),
                        cumulative_logprob=out.cumulative_logprob,
                        finish_reason=out.finish_reason if done else "length",
                        logprobs=self._logprobs(out.token_ids, out.logprobs, p.logprobs)
                        if done
                        else None,
                    ),
                    done,
                )

    def _logprobs(
        self, token_ids: Sequence[int], entries: Any, k: int | None
    ) -> tuple[TokenLogprob, ...] | None:
        if k is None or entries is None:
            return None
        result = []
        pairs = list(zip(token_ids, entries, strict=False))
        while pairs and pairs[-1][0] in self.special_ids:
            pairs.pop()  # the EOS that ended the candidate is not part of its text
        for token_id, entry in pairs:
            chosen = entry[token_id]
            top = sorted(
                (
                    (lp.rank or 0, self._token_text(tid, lp), lp.logprob)
                    for tid, lp in entry.items()
                ),
                key=lambda t: t[0],
            )
            result.append(
                TokenLogprob(
                    token=self._token_text(token_id, chosen),
                    logprob=chosen.logprob,
                    top=tuple((tok, lp) for rank, tok, lp in top if 1 <= rank <= k),
                )
            )
        return tuple(result)

    def _token_text(self, token_id: int, logprob: Any) -> str:
        text = getattr(logprob, "decoded_token", None)
        return text if text is not None else self.tokenizer.decode([token_id])

    # ---------------------------------------------------------------- lifecycle

    def num_unfinished(self) -> int:
        return self.engine.output_processor.get_num_unfinished_requests()

    def engine_metrics(self) -> Iterable[Any]:
        """vLLM's own ``vllm:*`` metric families (tokens generated, requests running and
        waiting, KV cache use), as its ``PrometheusStatLogger`` keeps them in this process."""
        from vllm.v1.metrics.prometheus import get_prometheus_registry

        return [f for f in get_prometheus_registry().collect() if f.name.startswith("vllm:")]

    async def check_health(self) -> None:
        await self.engine.check_health()

    def shutdown(self) -> None:
        self.engine.shutdown()
