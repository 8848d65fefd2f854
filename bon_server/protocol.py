"""OpenAI wire models (pydantic), fields in the order of OpenAI's API reference.

Unknown fields are accepted and ignored (``extra="allow"``), as OpenAI-compatible
servers do. The Best-of-N extensions sit in one fenced block per request model;
clients send them through the openai SDK's ``extra_body``. Conversion to the
domain objects of ``types.py`` lives here, on the request (``to_prompt``,
``to_sampling``), so routes stay thin.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from .errors import InvalidRequestError
from .types import Message, Prompt, SamplingParams

MAX_STOP_SEQUENCES = 4


class OpenAIModel(BaseModel):
    model_config = ConfigDict(extra="allow")


class RequestModel(OpenAIModel):
    """Strict types, as OpenAI checks them: ``"temperature": "1"`` or ``"logprobs": false``
    on /v1/completions is a 400, not silently coerced."""

    model_config = ConfigDict(extra="allow", strict=True)


# ---------------------------------------------------------------- requests


class TextPart(RequestModel):
    type: str
    text: str | None = None


class ChatMessage(RequestModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self, index: int) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        pieces = []
        for part in self.content:
            if part.type != "text":
                raise InvalidRequestError(
                    f"content part of type {part.type!r} is not supported; only 'text' parts are",
                    param=f"messages.{index}.content",
                )
            if part.text is None:
                raise InvalidRequestError(
                    "a 'text' content part needs a 'text' field", param=f"messages.{index}.content"
                )
            pieces.append(part.text)
        return "".join(pieces)


class StreamOptions(RequestModel):
    include_usage: bool = False


class ResponseFormat(RequestModel):
    type: str = "text"


Stop = str | list[str] | None
Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
def _integral(value: Any) -> Any:
    """A JSON number with no fractional part is an integer (JSON Schema's rule, and so this
    server's OpenAPI document's): ``"n": 2.0`` is 2. Anything else is left to the strict check
    (``2.5``, ``"2"`` and ``true`` stay 400s)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Integer = Annotated[int, BeforeValidator(_integral)]
Count = Annotated[Integer, Field(ge=1, le=128)]


MAX_TESTS = 256  # snippets a request may send (each also bounded by the body limit)


class _Common(RequestModel):
    """Fields shared by chat and completions requests."""

    model: str | None = None
    frequency_penalty: Penalty = 0.0
    logit_bias: (
        Annotated[dict[str, Annotated[float, Field(ge=-100, le=100)]], Field(max_length=1024)]
        | None
    ) = None
    n: Count = 1
    presence_penalty: Penalty = 0.0
    # vLLM's bound: a seed must fit a 64-bit integer (torch's generators take no more)
    seed: Annotated[Integer, Field(ge=-(2**63), le=2**63 - 1)] | None = None
    stop: Stop = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    user: str | None = None

    # --- Best-of-N extensions (extra_body) -----------------------------------
    best_of: Count | None = None
    selector: str | None = None
    return_candidates: bool = False
    prm_aggregation: str | None = None
    # adaptive sampling: waves up to best_of until the selection is settled (None: the
    # server's --adaptive and --adaptive-* defaults)
    adaptive: bool | None = None
    adaptive_wave: Count | None = None
    adaptive_min: Count | None = None
    adaptive_confidence: Annotated[float, Field(ge=0.5, le=1.0)] | None = None
    adaptive_threshold: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    # verifier-guided pruning: all best_of start, the weakest are aborted at step boundaries
    prune: bool | None = None
    prune_every: Count | None = None
    prune_keep: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    prune_rounds: Count | None = None
    prune_distinct: bool | None = None
    # step search over a step scorer: best_of_n (whole candidates), beam, dvts, particles
    # (None: the server's --search and its --beam-width, --search-* defaults)
    search: str | None = None
    beam_width: Count | None = None
    search_max_steps: Annotated[Integer, Field(ge=1, le=1024)] | None = None
    search_temperature: Annotated[float, Field(gt=0.0, le=100.0)] | None = None
    # code checked by its tests: snippets run after each candidate's program in the sandbox
    tests: str | list[str] | None = None
    tests_timeout_s: Annotated[float, Field(gt=0.0)] | None = None
    # --- vLLM-style sampling extensions ---------------------------------------
    top_k: Annotated[Integer, Field(ge=-1)] | None = None
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0.0, le=2.0)] | None = None
    ignore_eos: bool = False
    # --------------------------------------------------------------------------

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: Stop) -> Stop:
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must not be empty")
        return value

    @field_validator("tests", mode="before")
    @classmethod
    def _tests(cls, value: Any) -> Any:
        """One script, or a list of 1..256 non-empty snippets; one param for every mistake."""
        items = [value] if isinstance(value, str) else value
        if value is None:
            return value
        if not isinstance(items, list) or not items or len(items) > MAX_TESTS:
            raise InvalidRequestError(
                f"tests must be a test script or a list of 1 to {MAX_TESTS} test snippets",
                param="tests",
            )
        if not all(isinstance(t, str) and t.strip() for t in items):
            raise InvalidRequestError("every test must be a non-empty string", param="tests")
        return value

    @model_validator(mode="after")
    def _best_of(self) -> _Common:
        if self.best_of is not None and self.best_of < self.n:
            raise InvalidRequestError(
                f"best_of ({self.best_of}) must be greater than or equal to n ({self.n})",
                param="best_of",
            )
        if self.stream_options is not None and not self.stream:
            raise InvalidRequestError(
                "stream_options is only allowed when stream is true", param="stream_options"
            )
        return self

    def search_options(self) -> dict[str, Any]:
        """The plan's search arguments (``BestOfN.plan``): adaptive, prune, their overrides."""
        return {
            "adaptive": self.adaptive,
            "adaptive_options": {
                "wave": self.adaptive_wave,
                "min_candidates": self.adaptive_min,
                "confidence": self.adaptive_confidence,
                "threshold": self.adaptive_threshold,
            },
            "prune": self.prune,
            "prune_options": {
                "every": self.prune_every,
                "keep": self.prune_keep,
                "rounds": self.prune_rounds,
                "distinct": self.prune_distinct,
            },
            "tests": self.tests,
            "tests_timeout_s": self.tests_timeout_s,
            "search": self.search,
            "search_options": {
                "width": self.beam_width,
                "max_steps": self.search_max_steps,
                "temperature": self.search_temperature,
            },
        }

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def _sampling(self, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
        stops = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        bias = []
        for key, value in (self.logit_bias or {}).items():
            try:
                bias.append((int(key), float(value)))
            except ValueError:
                raise InvalidRequestError(
                    f"logit_bias keys must be token ids, got {key!r}", param="logit_bias"
                ) from None
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k if self.top_k and self.top_k > 0 else 0,
            min_p=self.min_p or 0.0,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            repetition_penalty=self.repetition_penalty or 1.0,
            stop=stops,
            seed=self.seed,
            logit_bias=tuple(bias),
            logprobs=logprobs,
            ignore_eos=self.ignore_eos,
        )


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    max_completion_tokens: Annotated[Integer, Field(ge=1)] | None = None
    max_tokens: Annotated[Integer, Field(ge=1)] | None = None
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    top_logprobs: Annotated[Integer, Field(ge=0, le=20)] | None = None

    @model_validator(mode="after")
    def _unsupported(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequestError(
                "top_logprobs requires logprobs to be true", param="top_logprobs"
            )
        if self.response_format is not None and self.response_format.type != "text":
            raise InvalidRequestError(
                f"response_format {self.response_format.type!r} is not supported; use 'text'",
                param="response_format",
            )
        if self.tools and self.tool_choice != "none":
            raise InvalidRequestError("tool calling is not supported", param="tools")
        return self

    def check_size(self, max_messages: int, max_chars: int) -> None:
        """The server's bounds on message count and length (settings, so not a validator)."""
        if len(self.messages) > max_messages:
            raise InvalidRequestError(
                f"{len(self.messages)} messages exceed this server's limit of {max_messages}",
                param="messages",
            )
        for i, m in enumerate(self.messages):
            content = m.content
            size = (
                len(content)
                if isinstance(content, str)
                else sum(len(p.text or "") for p in content or ())
            )
            if size > max_chars:
                raise InvalidRequestError(
                    f"message {i} has {size} characters; this server's limit is {max_chars}",
                    param=f"messages.{i}.content",
                )

    def to_prompt(self) -> Prompt:
        messages = []
        for i, m in enumerate(self.messages):
            role = "system" if m.role == "developer" else m.role
            if role not in ("system", "user", "assistant"):
                raise InvalidRequestError(
                    f"messages with role {m.role!r} are not supported", param=f"messages.{i}.role"
                )
            messages.append(Message(role=role, content=m.text(i)))
        return Prompt(messages=tuple(messages))

    def to_sampling(self) -> SamplingParams:
        max_tokens = self.max_completion_tokens or self.max_tokens
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        return self._sampling(max_tokens, logprobs)


class CompletionRequest(_Common):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: Annotated[Integer, Field(ge=0, le=5)] | None = None
    max_tokens: Annotated[Integer, Field(ge=1)] | None = 16
    suffix: str | None = None

    @model_validator(mode="after")
    def _unsupported(self) -> CompletionRequest:
        if self.suffix:
            raise InvalidRequestError("suffix is not supported", param="suffix")
        if isinstance(self.prompt, list) and len(self.prompt) == 0:
            raise InvalidRequestError("prompt must not be empty", param="prompt")
        return self

    def check_size(self, max_prompts: int, max_chars: int) -> None:
        """The server's bounds on how many prompts and how long each (characters or tokens)."""
        p = self.prompt
        if isinstance(p, str) or all(isinstance(x, int) for x in p):
            prompts: list[Any] = [p]
        else:
            prompts = list(p)
        if len(prompts) > max_prompts:
            raise InvalidRequestError(
                f"{len(prompts)} prompts exceed this server's limit of {max_prompts}",
                param="prompt",
            )
        for prompt in prompts:
            if len(prompt) > max_chars:
                raise InvalidRequestError(
                    f"a prompt of length {len(prompt)} exceeds this server's limit of {max_chars}",
                    param="prompt",
                )

    def to_prompts(self) -> list[Prompt]:
        p = self.prompt
        if isinstance(p, str):
            return [Prompt(text=p)]
        if all(isinstance(x, int) for x in p):
            return [Prompt(token_ids=tuple(p))]  # type: ignore[arg-type]
        if all(isinstance(x, str) for x in p):
            return [Prompt(text=x) for x in p]  # type: ignore[misc]
        return [Prompt(token_ids=tuple(x)) for x in p]  # type: ignore[union-attr, arg-type]

    def to_sampling(self) -> SamplingParams:
        return self._sampling(self.max_tokens, self.logprobs)


# ---------------------------------------------------------------- responses


def completion_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class Usage(OpenAIModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatLogprobTop(OpenAIModel):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatLogprobToken(ChatLogprobTop):
    top_logprobs: list[ChatLogprobTop]


class ChatChoiceLogprobs(OpenAIModel):
    content: list[ChatLogprobToken] | None


class AssistantMessage(OpenAIModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None


class ChatChoice(OpenAIModel):
    index: int
    message: AssistantMessage
    logprobs: ChatChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length"]
    score: float  # Best-of-N extension: the selector's score of this choice


class StepInfo(OpenAIModel):
    """One step of a candidate (a non-empty line) and the PRM's score of it (step search:
    the step scorer's score of the candidate after this step, as the search judged it)."""

    text: str
    score: float | None  # None: cut from a text longer than the PRM's context


class TestsInfo(OpenAIModel):
    """A candidate's program against the request's tests, run in the sandbox."""

    passed: int
    failed: int
    errored: int
    first_error: str | None  # the last line of the first failure's traceback
    timed_out: bool = False


class CandidateInfo(OpenAIModel):
    """One generated candidate, returned when ``return_candidates`` is true."""

    index: int
    text: str
    score: float
    verifier_score: float | None
    answer: str | None
    finish_reason: Literal["stop", "length", "pruned"]
    completion_tokens: int
    # where a PRM scored the candidate: its steps, each with the PRM's probability that the
    # step is right (the verifier_score aggregates these); None otherwise
    steps: list[StepInfo] | None = None
    wave: int = 0  # adaptive sampling: the wave that drew it
    # pruned: aborted part-way (its text: the lines the verifier judged; its tokens: all it
    # made; its verifier_score: at pruning; never chosen)
    state: Literal["finished", "pruned"] = "finished"
    # with ``tests``: how its program fared (None without tests)
    tests: TestsInfo | None = None


# a step search's own figures: absent from other responses (and beam_width from particles')
StepField = Annotated[int | None, Field(exclude_if=lambda v: v is None)]


class SearchInfo(OpenAIModel):
    """How the candidates were drawn: ``fixed`` (all best_of at once), ``adaptive`` (waves
    until settled) or ``prune`` (all started, the weakest aborted part-way)."""

    mode: Literal["fixed", "adaptive", "prune", "beam", "dvts", "particles"]
    cap: int  # best_of: the most candidates the request could draw
    waves: int
    candidates_started: int
    candidates_finished: int
    candidates_pruned: int = 0
    prune_rounds: int = 0  # pruning rounds that aborted something
    stopped_early: bool  # the stopping rule ended sampling below the cap
    # step search (beam, dvts, particles): rounds of expansion, one-step continuations drawn,
    # partial beams given up; beam_width is M (beam, dvts)
    steps: StepField = None
    beams_expanded: StepField = None
    beams_dropped: StepField = None
    beam_width: StepField = None


class BestOfNInfo(OpenAIModel):
    """The top-level ``bon`` extension object of every response."""

    best_of: int
    selector: str
    prm_aggregation: str | None = None
    scores: list[float]  # the selector's score of every candidate, in generation order
    verifier_scores: list[float] | None = None
    chosen: list[int]  # candidate index of each returned choice
    search: SearchInfo | None = None
    candidates: list[CandidateInfo] | None = None


class ChatCompletionResponse(OpenAIModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None
    bon: BestOfNInfo | list[BestOfNInfo]


class CompletionLogprobs(OpenAIModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(OpenAIModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"]
    score: float


class CompletionResponse(OpenAIModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    system_fingerprint: str | None = None
    bon: BestOfNInfo | list[BestOfNInfo]


class ModelCard(OpenAIModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "bon"
    root: str | None = None


class ProblemCard(OpenAIModel):
    """``GET /v1/bon/problem``: a fresh problem from the served world (the page's button)."""

    object: Literal["bon.problem"] = "bon.problem"
    world: str
    seed: int
    prompt: str  # the user message, exactly as the world's prompts are written


class ModelList(OpenAIModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(OpenAIModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorResponse(OpenAIModel):
    error: ErrorDetail


class HealthStatus(OpenAIModel):
    status: str  # ok | draining | unhealthy
    detail: str | None = None
