"""Best-of-N results -> OpenAI response bodies and stream chunks (chat and completions).

The returned choices are the top ``n`` of the ranking; ``usage.completion_tokens``
counts the tokens of EVERY candidate, because that is what the request cost.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .protocol import (
    BestOfNInfo,
    CandidateInfo,
    ChatChoice,
    ChatChoiceLogprobs,
    ChatCompletionResponse,
    ChatLogprobToken,
    ChatLogprobTop,
    CompletionChoice,
    CompletionLogprobs,
    CompletionResponse,
    SearchInfo,
    StepInfo,
    TestsInfo,
    Usage,
)
from .scorers.steps import DEFAULT_SEPARATOR, split_steps
from .search.steps import STEP_METHODS
from .types import BestOfNResult, TokenLogprob


@dataclass(frozen=True, slots=True)
class ResponseMeta:
    id: str
    created: int
    model: str
    n: int
    return_candidates: bool = False
    include_usage: bool = False
    step_separator: str = DEFAULT_SEPARATOR  # the PRM's: the page shows the steps it scored


def usage(results: Sequence[BestOfNResult]) -> Usage:
    prompt = sum(r.prompt_tokens for r in results)
    completion = sum(r.completion_tokens for r in results)
    return Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


def _steps(text: str, scores: Sequence[float], separator: str) -> list[StepInfo]:
    """A candidate's steps (cut as the PRM cut them) with the PRM's scores: the scores belong
    to the LAST steps (a text longer than the PRM's context loses its first steps, which have
    none)."""
    steps = split_steps(text, separator)
    cut = len(steps) - len(scores)
    return [
        StepInfo(text=t, score=scores[i - cut] if i >= cut else None) for i, t in enumerate(steps)
    ]


def _tests(report: Any) -> TestsInfo:
    return TestsInfo(passed=report.passed, failed=report.failed, errored=report.errored,
                     first_error=report.first_error, timed_out=report.timed_out)


def _step_search(result: BestOfNResult) -> dict[str, int | None]:
    s = result.search
    return {"steps": s.steps, "beams_expanded": s.expanded, "beams_dropped": s.dropped,
            "beam_width": s.width}


def bon_info(result: BestOfNResult, meta: ResponseMeta) -> BestOfNInfo:
    candidates = None
    pruned = set(result.search.pruned)
    if meta.return_candidates:
        candidates = [
            CandidateInfo(
                index=i,
                text=c.text,
                score=result.scores[i],
                verifier_score=result.verifier_scores[i] if result.verifier_scores else None,
                answer=result.answers[i],
                finish_reason="pruned" if i in pruned else c.finish_reason,
                completion_tokens=len(c.token_ids),
                steps=(_steps(c.text, result.step_scores[i], meta.step_separator)
                       if result.step_scores else None),
                wave=result.search.wave_of[i] if result.search.wave_of else 0,
                state="pruned" if i in pruned else "finished",
                tests=_tests(result.tests[i]) if result.tests is not None else None,
            )
            for i, c in enumerate(result.candidates)
        ]
    return BestOfNInfo(
        best_of=len(result.candidates),
        selector=result.selector,
        prm_aggregation=result.aggregation,
        scores=list(result.scores),
        verifier_scores=list(result.verifier_scores) if result.verifier_scores else None,
        chosen=list(result.order[: meta.n]),
        search=SearchInfo(
            mode=result.search.mode,  # type: ignore[arg-type]
            cap=result.search.cap or len(result.candidates),
            waves=result.search.waves,
            candidates_started=len(result.candidates),
            candidates_finished=len(result.candidates) - len(pruned),
            candidates_pruned=len(pruned),
            prune_rounds=result.search.rounds,
            stopped_early=result.search.stopped_early,
            **(_step_search(result) if result.search.mode in STEP_METHODS else {}),
        ),
        candidates=candidates,
    )


def _chat_logprobs(tokens: Sequence[TokenLogprob] | None) -> ChatChoiceLogprobs | None:
    if tokens is None:
        return None
    return ChatChoiceLogprobs(
        content=[
            ChatLogprobToken(
                token=t.token,
                logprob=t.logprob,
                bytes=list(t.token.encode()),
                top_logprobs=[
                    ChatLogprobTop(token=tok, logprob=lp, bytes=list(tok.encode()))
                    for tok, lp in t.top
                ],
            )
            for t in tokens
        ]
    )


def _completion_logprobs(
    tokens: Sequence[TokenLogprob] | None, offset: int
) -> CompletionLogprobs | None:
    if tokens is None:
        return None
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t.token)
    return CompletionLogprobs(
        tokens=[t.token for t in tokens],
        token_logprobs=[t.logprob for t in tokens],
        top_logprobs=[dict(t.top) for t in tokens],
        text_offset=offsets,
    )


def chat_response(result: BestOfNResult, meta: ResponseMeta) -> ChatCompletionResponse:
    choices = []
    for rank, idx in enumerate(result.order[: meta.n]):
        c = result.candidates[idx]
        choices.append(
            ChatChoice(
                index=rank,
                message={"role": "assistant", "content": c.text},
                logprobs=_chat_logprobs(c.logprobs),
                finish_reason=c.finish_reason,
                score=result.scores[idx],
            )
        )
    return ChatCompletionResponse(
        id=meta.id,
        created=meta.created,
        model=meta.model,
        choices=choices,
        usage=usage([result]),
        bon=bon_info(result, meta),
    )


def completion_response(
    results: Sequence[BestOfNResult], meta: ResponseMeta, echo_texts: Sequence[str] | None = None
) -> CompletionResponse:
    choices = []
    for p, result in enumerate(results):
        prefix = echo_texts[p] if echo_texts else ""
        for rank, idx in enumerate(result.order[: meta.n]):
            c = result.candidates[idx]
            choices.append(
                CompletionChoice(
                    index=p * meta.n + rank,
                    text=prefix + c.text,
                    logprobs=_completion_logprobs(c.logprobs, len(prefix)),
                    finish_reason=c.finish_reason,
                    score=result.scores[idx],
                )
            )
    infos = [bon_info(r, meta) for r in results]
    return CompletionResponse(
        id=meta.id,
        created=meta.created,
        model=meta.model,
        choices=choices,
        usage=usage(results),
        bon=infos[0] if len(infos) == 1 else infos,
    )


# ------------------------------------------------------------------ streaming


def _chunk(meta: ResponseMeta, obj: str, choices: list[dict[str, Any]], **extra: Any) -> dict:
    chunk: dict[str, Any] = {
        "id": meta.id,
        "object": obj,
        "created": meta.created,
        "model": meta.model,
        "choices": choices,
    }
    if meta.include_usage:
        chunk["usage"] = None
    chunk.update(extra)
    return chunk


def chat_chunks(result: BestOfNResult, meta: ResponseMeta) -> Iterator[dict]:
    """The selected answers as OpenAI ``chat.completion.chunk`` objects."""
    obj = "chat.completion.chunk"
    info = bon_info(result, meta).model_dump(exclude_none=True)
    for rank, idx in enumerate(result.order[: meta.n]):
        c = result.candidates[idx]
        first = {
            "index": rank,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
            "score": result.scores[idx],
        }
        yield _chunk(meta, obj, [first], **({"bon": info} if rank == 0 else {}))
        lp = _chat_logprobs(c.logprobs)
        yield _chunk(
            meta,
            obj,
            [
                {
                    "index": rank,
                    "delta": {"content": c.text},
                    "logprobs": lp.model_dump() if lp else None,
                    "finish_reason": None,
                }
            ],
        )
        yield _chunk(
            meta,
            obj,
            [{"index": rank, "delta": {}, "logprobs": None, "finish_reason": c.finish_reason}],
        )
    if meta.include_usage:
        yield _chunk(meta, obj, [], usage=usage([result]).model_dump())


def completion_chunks(
    results: Sequence[BestOfNResult], meta: ResponseMeta, echo_texts: Sequence[str] | None = None
) -> Iterator[dict]:
    obj = "text_completion"
    for p, result in enumerate(results):
        info = bon_info(result, meta).model_dump(exclude_none=True)
        prefix = echo_texts[p] if echo_texts else ""
        for rank, idx in enumerate(result.order[: meta.n]):
            c = result.candidates[idx]
            lp = _completion_logprobs(c.logprobs, len(prefix))
            choice = {
                "index": p * meta.n + rank,
                "text": prefix + c.text,
                "logprobs": lp.model_dump() if lp else None,
                "finish_reason": None,
                "score": result.scores[idx],
            }
            yield _chunk(meta, obj, [choice], **({"bon": info} if rank == 0 else {}))
            done = {
                "index": p * meta.n + rank,
                "text": "",
                "logprobs": None,
                "finish_reason": c.finish_reason,
            }
            yield _chunk(meta, obj, [done])
    if meta.include_usage:
        yield _chunk(meta, obj, [], usage=usage(results).model_dump())
