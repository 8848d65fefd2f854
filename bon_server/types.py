"""The domain objects that flow through the pipeline: frozen dataclasses, no pydantic.

The wire models in ``protocol.py`` are converted into these at the edge
(``ChatCompletionRequest.to_prompt`` / ``to_sampling``), so the pipeline,
generators, scorers and selectors never see HTTP or JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True, slots=True)
class Prompt:
    """What the user asked: chat messages, a completion text, or token ids (exactly one)."""

    messages: tuple[Message, ...] | None = None
    text: str | None = None
    token_ids: tuple[int, ...] | None = None

    def question(self) -> str:
        """The text a verifier judges: the last user message, or the raw prompt."""
        if self.messages is not None:
            users = [m.content for m in self.messages if m.role == "user"]
            return users[-1] if users else self.messages[-1].content
        return self.text or ""


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Sampling settings for one engine request (n comes separately as best_of)."""

    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logit_bias: tuple[tuple[int, float], ...] = ()
    # None: no per-token logprobs needed; k >= 0: the sampled token plus k alternatives.
    logprobs: int | None = None
    ignore_eos: bool = False


@dataclass(frozen=True, slots=True)
class Candidate:
    text: str
    token_ids: tuple[int, ...]
    cumulative_logprob: float | None
    finish_reason: FinishReason
    logprobs: tuple[TokenLogprob, ...] | None = None

    @property
    def mean_logprob(self) -> float | None:
        if self.cumulative_logprob is None:
            return None
        return self.cumulative_logprob / max(1, len(self.token_ids))


@dataclass(frozen=True, slots=True)
class Extension:
    """Step search asks: ``n`` continuations of the prompt followed by ``prefix`` (token ids
    the policy drew earlier); prefix and continuation together stay within the request's
    ``max_tokens``."""

    prefix: tuple[int, ...]
    n: int
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class Piece:
    """One continuation drawn for an ``Extension``: a step, or the rest of a candidate."""

    text: str
    token_ids: tuple[int, ...]
    logprob: float | None
    ended: bool  # EOS, a client stop string or the token budget: no more steps
    finish_reason: FinishReason = "stop"


@dataclass(frozen=True, slots=True)
class Progress:
    """One candidate as it grows (``Generator.stream``): all of it so far, and whether it
    has ended (only then is its ``finish_reason`` meant)."""

    candidate: Candidate
    done: bool = False
    # the prompt's token count, where only the stream can tell it (an upstream's usage)
    prompt_tokens: int | None = None

    @property
    def text(self) -> str:
        return self.candidate.text


@dataclass(frozen=True, slots=True)
class Generation:
    """One engine request's result: every candidate plus the prompt's token count."""

    candidates: tuple[Candidate, ...]
    prompt_tokens: int


@dataclass(frozen=True, slots=True)
class Search:
    """How the candidates were drawn: all at once (``fixed``), in waves (``adaptive``), or
    all started and the weakest aborted on the way (``prune``)."""

    mode: str = "fixed"  # or "adaptive", "prune", "beam", "dvts", "particles"
    cap: int = 0  # best_of: the most candidates the request could draw
    waves: int = 1
    stopped_early: bool = False  # a stopping rule ended sampling below the cap
    wave_of: tuple[int, ...] = ()  # the wave each candidate came from
    pruned: tuple[int, ...] = ()  # candidates aborted by pruning (their text is partial)
    rounds: int = 0  # pruning rounds that aborted something
    steps: int = 0  # step search: expansion rounds
    expanded: int = 0  # step search: one-step continuations drawn
    dropped: int = 0  # step search: partial beams given up
    width: int | None = None  # step search: M (beam, dvts)


@dataclass(frozen=True, slots=True)
class BestOfNResult:
    """Every candidate in generation order, what the selector made of them, and the cost."""

    candidates: tuple[Candidate, ...]
    answers: tuple[str | None, ...]
    scores: tuple[float, ...]  # the selector's score of each candidate
    verifier_scores: tuple[float, ...] | None
    order: tuple[int, ...]  # candidate indices, best first
    selector: str
    aggregation: str | None
    prompt_tokens: int
    timings: dict[str, float] = field(default_factory=dict)
    # a PRM's score of each candidate's steps (``steps.split_steps``), where a PRM scored
    # them: the LAST len(...) steps (a text longer than the PRM's context loses its first)
    step_scores: tuple[tuple[float, ...], ...] | None = None
    search: Search = field(default_factory=Search)
    # every token generated, where that is more than the candidates hold (step search: the
    # steps of beams it dropped); None: the candidates' own
    generated_tokens: int | None = None
    # with the request's ``tests``: each candidate's report (``sandbox.TestReport``)
    tests: tuple[Any, ...] | None = None

    @property
    def completion_tokens(self) -> int:
        if self.generated_tokens is not None:
            return self.generated_tokens
        return sum(len(c.token_ids) for c in self.candidates)
