"""One validated Settings object, built by the CLI (or a test) and passed in explicitly.

Every field can also come from the environment as ``BON_<FIELD>``; there is no
module-level instance.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from . import tasks  # noqa: F401  (imports every world, which registers its answer rules)
from .answers import DEFAULT_RULES, check_rules

EMBEDDED_DIR = Path(__file__).parent / "embedded"
# The one default: graph paths, the world whose shipped verifier (paths-orm, named by the
# policy's serving.json) gains most over voting. `make serve` serves the same.
EMBEDDED_POLICY = EMBEDDED_DIR / "paths-policy"
# A policy directory may say how its world is best served: ``serving.json`` names the shipped
# verifier (a directory beside the policy, or a path), its kind, the selector and the PRM
# aggregation that evaluated best. They are the defaults whenever the policy is served; any
# of them given explicitly wins, and ``--no-world-defaults`` ignores the file.
SERVING_FILE = "serving.json"
WORLD_DEFAULT_FIELDS = ("verifier", "verifier_kind", "default_selector", "prm_aggregation")


def world_defaults(model: str) -> dict[str, str]:
    """The serving defaults a policy directory ships (empty without ``serving.json``)."""
    path = Path(model) / SERVING_FILE
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    out = {k: data[k] for k in WORLD_DEFAULT_FIELDS if data.get(k) is not None}
    if "verifier" in out and not Path(out["verifier"]).is_absolute():
        out["verifier"] = str(Path(model).parent / out["verifier"])
    return out


def _string_list(value: object) -> list[str]:
    """A comma-separated string (env var, flag), a JSON list, or a list: a list of strings.

    List fields are ``NoDecode``: pydantic-settings would otherwise insist that
    ``BON_API_KEYS=a,b`` be JSON.
    """
    if isinstance(value, str):
        text = value.strip()
        value = json.loads(text) if text.startswith("[") else [text]
    items = []
    for item in value:  # type: ignore[union-attr]
        items.extend(p.strip() for p in str(item).split(","))
    return [i for i in items if i]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BON_", frozen=True, extra="forbid")

    # what to serve
    model: str = Field(str(EMBEDDED_POLICY), description="policy: local HF directory or hub id")
    served_model_name: str | None = Field(None, description="name clients send as `model`")
    verifier: str | None = Field(
        None, description="verifier: local HF directory or hub id; task:<world> (the world's "
        "exact step and answer checkers) or py:module:function (your step scorer)"
    )
    verifier_kind: Literal["orm", "prm"] = "orm"
    verifier_step_format: str = Field(
        "auto", description="PRM step format: auto|bon|qwen|math_shepherd|rlhflow"
    )
    prm_aggregation: Literal["min", "prod", "last", "mean"] = Field(
        "min", description="default PRM step-score aggregation"
    )
    step_separator: str | None = Field(
        None, description="how the PRM cuts a candidate into steps: line|blank|TEXT; None: the "
        "world's (one step a line)"
    )
    verifier_trust_remote_code: bool = Field(
        False, description="let transformers run the verifier's own code (Qwen2.5-Math-PRM)"
    )
    verifier_device: str = Field("auto", description="torch device for the verifier: auto|cpu|cuda")
    verifier_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    verifier_batch_size: int = Field(64, ge=1, description="most texts per scoring forward pass")
    verifier_share_prefix: bool = Field(
        True,
        description="in-process ORM: run the prompt that a request's candidates share once, "
        "not once per candidate (same scores, less compute)",
    )

    # proxy mode (issue 5): candidates from an OpenAI-compatible server, scores from a pooling one
    upstream: str | None = Field(
        None, description="OpenAI base URL of a policy server, http://host:8000/v1 (no engine)"
    )
    upstream_api_key: str | None = Field(None, repr=False, description="Bearer key for --upstream")
    upstream_model: str | None = Field(
        None, description="model name to ask --upstream for (default: its first /v1/models entry)"
    )
    upstream_timeout: float = Field(600.0, gt=0, description="seconds to await an upstream reply")
    upstream_connect_timeout: float = Field(5.0, gt=0, description="seconds to connect upstream")
    upstream_retries: int = Field(
        2, ge=0, description="retries (with backoff) on upstream connection errors and 5xx"
    )
    upstream_max_connections: int = Field(256, ge=1, description="pooled upstream connections")
    verifier_url: str | None = Field(
        None, description="base URL of a vLLM pooling server that scores (/classify, /pooling)"
    )
    verifier_api_key: str | None = Field(
        None, repr=False, description="Bearer key for --verifier-url"
    )
    verifier_model: str | None = Field(
        None, description="model name on --verifier-url (default: its first /v1/models entry)"
    )

    # security and limits (issue 6)
    api_keys: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        repr=False,
        description="accepted Bearer key; repeat --api-key (BON_API_KEYS: comma-separated); "
        "none: no authentication",
    )
    metrics_require_key: bool = Field(False, description="ask for an API key on /metrics too")
    max_request_bytes: int = Field(2_000_000, ge=1024, description="largest request body (413)")
    max_messages: int = Field(
        1024, ge=1, description="most messages in a chat request (prompts in a completions one)"
    )
    max_message_chars: int = Field(
        1_000_000, ge=1, description="longest message content or prompt, in characters (tokens)"
    )
    max_sequences_in_flight: int = Field(
        1024,
        ge=0,
        description="admission bound: sequences in flight, a request counting best_of x prompts; "
        "0: unbounded",
    )
    admission_timeout: float = Field(
        0.0, ge=0, description="seconds a request may queue for admission before its 429 (0: none)"
    )
    request_timeout: float | None = Field(
        None, gt=0, description="deadline in seconds for a request's work once admitted (504)"
    )
    shutdown_timeout: float = Field(
        30.0, ge=0, description="on SIGTERM: seconds to finish in-flight work before aborting it"
    )
    log_content: bool = Field(False, description="include prompt and completion text in logs")

    # HTTP
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)

    # Best-of-N policy
    default_best_of: int = Field(4, ge=1)
    max_best_of: int = Field(64, ge=1)
    default_selector: str | None = Field(
        None, description="None: verifier if loaded, else majority"
    )
    answer_rules: Annotated[tuple[str, ...] | None, NoDecode] = Field(
        None, description="answer extraction for voting, first match wins; None: the served "
        "world's rules (Countdown: expression_value), else final_line,boxed. 'math' reads "
        "answers as math-verify does (the last \\boxed{}, else the last expression) and counts "
        "two as one vote when math-verify calls them equal (1/2, 0.5, \\frac{1}{2})"
    )
    max_tokens_limit: int | None = Field(None, ge=1, description="cap on max_tokens per request")
    keepalive_interval_s: float = Field(2.0, gt=0, description="SSE comment period while sampling")
    # adaptive sampling: the defaults of requests that do not say (``adaptive``, ``adaptive_*``)
    adaptive: bool = Field(
        False, description="draw candidates in waves until the selection is settled"
    )
    adaptive_wave: int = Field(2, ge=1, le=128, description="adaptive: candidates per wave")
    adaptive_min: int = Field(
        3, ge=1, le=128, description="adaptive: never stop before this many candidates"
    )
    adaptive_confidence: float = Field(
        0.75, ge=0.5, le=1.0, description="adaptive majority rules: P(leader is the mode) to stop"
    )
    adaptive_threshold: float = Field(
        0.9, ge=0.0, le=1.0, description="adaptive verifier rule: best verifier score to stop"
    )
    # pruning: the defaults of requests that do not say (``prune``, ``prune_*``)
    prune: bool = Field(
        False, description="start all candidates, abort the weakest by the verifier part-way"
    )
    prune_every: int = Field(1, ge=1, le=128, description="prune: steps between pruning rounds")
    prune_keep: float = Field(
        0.5, gt=0.0, le=1.0, description="prune: share of unfinished candidates a round keeps"
    )
    prune_rounds: int = Field(1, ge=1, le=128, description="prune: pruning rounds")
    prune_distinct: bool = Field(
        False,
        description="prune: among equal scores keep different prefixes before repeats of one",
    )
    # step search: the defaults of requests that do not say (``search``, ``beam_width``, ...)
    search: Literal["best_of_n", "beam", "dvts", "particles"] = Field(
        "best_of_n", description="how candidates are drawn: whole (best_of_n), or step by step "
        "under the step scorer (beam, dvts, particles)"
    )
    beam_width: int = Field(
        4, ge=1, le=128, description="beam: expansions per kept beam; dvts: subtree width (M)"
    )
    search_max_steps: int = Field(
        16, ge=1, le=1024, description="step search: most steps; the last runs to the end"
    )
    search_temperature: float = Field(
        0.1, gt=0.0, le=100.0,
        description="particles: resample in proportion to softmax(score / temperature)",
    )
    # code checked by its tests (the ``tests`` request field), run in bon_server.sandbox
    tests_timeout_s: float = Field(
        10.0, gt=0.0, le=600.0, description="tests: wall seconds per candidate when a request "
        "does not say; also the most a request may ask for (tests_timeout_s)"
    )
    tests_concurrency: int = Field(
        2, ge=1, le=256, description="tests: candidates run in the sandbox at once, server-wide"
    )
    tests_memory_mb: int = Field(
        1024, ge=64, le=1 << 20, description="tests: address space per candidate (MiB)"
    )
    score_while_decoding: bool = Field(
        False,
        description="fixed N with a verifier: one engine (or upstream) request per candidate, "
        "each scored as it ends while the others decode",
    )

    # the candidate page (GET /ui) and its new-problem button (GET /v1/bon/problem)
    ui: bool = Field(True, description="serve the candidate page at /ui (--no-ui: off)")
    world: str | None = Field(
        None,
        description="the world the policy solves, for /v1/bon/problem and voting (default: the "
        "one in the policy's training_config.json; needed in proxy mode)",
    )

    # engine
    seed: int = 0
    max_model_len: int | None = Field(None, ge=16)
    dtype: str = "auto"
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    tensor_parallel_size: int = Field(1, ge=1)
    kv_cache_gib: int = Field(1, ge=1, description="KV cache GiB on CPU (VLLM_CPU_KVCACHE_SPACE)")
    kv_block_size: int | None = Field(
        None, ge=16, multiple_of=16,
        description="tokens per KV cache block (default: 32 on CPU, where vLLM's 128 is longer "
        "than short prompts and leaves a best_of request's prompt uncached; vLLM's on GPU)",
    )
    enforce_eager: bool = False
    world_defaults: bool = Field(
        True, description="apply the policy's serving.json (its world's verifier and selector)"
    )

    @model_validator(mode="before")
    @classmethod
    def _world_defaults(cls, data: object) -> object:
        if not isinstance(data, dict):
            return data
        wanted = data.get("world_defaults", True)  # BON_WORLD_DEFAULTS arrives as text
        if str(wanted).strip().lower() in ("0", "false", "no", "off"):
            return data
        if data.get("upstream") is not None:  # proxy mode: the policy is elsewhere
            return data
        defaults = world_defaults(str(data.get("model", EMBEDDED_POLICY)))
        if "verifier" in data:  # an explicit verifier (or None) brings its own kind and selector
            defaults = {k: v for k, v in defaults.items() if k == "prm_aggregation"}
        return {**defaults, **data}

    @field_validator("world")
    @classmethod
    def _world(cls, value: str | None) -> str | None:
        if value is not None:
            from .tasks import get_task

            get_task(value)  # unknown: a ValueError listing the worlds
        return value

    @field_validator("answer_rules", mode="before")
    @classmethod
    def _rules(cls, value: object) -> tuple[str, ...] | None:
        return None if value is None else check_rules(_string_list(value))

    @field_validator("api_keys", mode="before")
    @classmethod
    def _keys(cls, value: object) -> tuple[str, ...]:
        # only a single plain string (BON_API_KEYS) is comma-separated; keys given one by one
        # (repeated --api-key, a list, a JSON list) are taken whole, and a comma in one is
        # refused rather than silently making it two keys
        if not isinstance(value, str) or value.strip().startswith("["):
            items = json.loads(value) if isinstance(value, str) else value
            if any("," in str(k) for k in items):  # type: ignore[union-attr]
                raise ValueError(
                    "an API key must not contain a comma; give each key separately "
                    "(repeat --api-key) or as BON_API_KEYS=key1,key2"
                )
            value = items
        keys = _string_list(value)
        if any(any(ch.isspace() for ch in k) for k in keys):
            raise ValueError("API keys must not contain whitespace")
        return tuple(keys)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.default_best_of > self.max_best_of:
            raise ValueError(
                f"default_best_of ({self.default_best_of}) exceeds max_best_of ({self.max_best_of})"
            )
        if 0 < self.max_sequences_in_flight < self.max_best_of:
            raise ValueError(
                f"max_sequences_in_flight ({self.max_sequences_in_flight}) is below max_best_of "
                f"({self.max_best_of}): a request at the cap could never be admitted"
            )
        if self.verifier_url is not None and self.verifier is None:
            raise ValueError(
                "verifier_url needs --verifier too: the verifier's tokenizer and config lay out "
                "the text locally (only those are loaded, no weights)"
            )
        if self.prune and self.verifier is None:
            raise ValueError("prune needs --verifier: it ranks the partial candidates")
        if self.search != "best_of_n" and self.verifier is None:
            raise ValueError(f"search {self.search!r} needs --verifier: it scores the steps")
        if self.prune and self.adaptive:
            raise ValueError("choose one of --adaptive and --prune")
        if self.default_selector is not None:
            from .selectors import SELECTORS, check_selector

            check_selector(self.default_selector)
            if SELECTORS[self.default_selector].needs_verifier and self.verifier is None:
                raise ValueError(f"default_selector {self.default_selector!r} needs --verifier")
        return self

    @property
    def served_world(self) -> str | None:
        """``world``, else the world named in the policy's training_config.json (local only)."""
        if self.world is not None or self.upstream is not None:
            return self.world
        from .tasks import policy_world

        return policy_world(self.model)

    @property
    def voting_rules(self) -> tuple[str, ...]:
        """``answer_rules``, else the served world's (``Task.answer_rules``), else the default."""
        if self.answer_rules is not None:
            return self.answer_rules
        from .tasks import TASKS

        task = TASKS.get(self.served_world or "")
        # a world this server does not know (a newer policy of ours) votes by the default rules
        return DEFAULT_RULES if task is None else tuple(task.answer_rules)

    @property
    def model_name(self) -> str:
        if self.served_model_name:
            return self.served_model_name
        if self.upstream is not None and self.upstream_model:
            return self.upstream_model
        if Path(self.model).resolve().parent == EMBEDDED_DIR.resolve():
            return Path(self.model).name  # "arith-policy", "paths-policy", ...
        return self.model.rstrip("/")
