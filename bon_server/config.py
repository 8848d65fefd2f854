"""One validated Settings object, built by the CLI (or a test) and passed in explicitly.

Every field can also come from the environment as ``BON_<FIELD>``; there is no
module-level instance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .answers import DEFAULT_RULES, check_rules

EMBEDDED_DIR = Path(__file__).parent / "embedded"
EMBEDDED_POLICY = EMBEDDED_DIR / "arith-policy"
EMBEDDED_POLICY_NAME = "arith-policy"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BON_", frozen=True, extra="forbid")

    # what to serve
    model: str = Field(str(EMBEDDED_POLICY), description="policy: local HF directory or hub id")
    served_model_name: str | None = Field(None, description="name clients send as `model`")
    verifier: str | None = Field(None, description="verifier: local HF directory or hub id")
    verifier_kind: Literal["orm", "prm"] = "orm"
    verifier_step_format: str = Field(
        "auto", description="PRM step format: auto|bon|qwen|math_shepherd|rlhflow"
    )
    prm_aggregation: Literal["min", "prod", "last", "mean"] = Field(
        "min", description="default PRM step-score aggregation"
    )
    verifier_trust_remote_code: bool = Field(
        False, description="let transformers run the verifier's own code (Qwen2.5-Math-PRM)"
    )
    verifier_device: str = Field("auto", description="torch device for the verifier: auto|cpu|cuda")
    verifier_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    verifier_batch_size: int = Field(64, ge=1, description="most texts per scoring forward pass")

    # proxy mode (issue 5): candidates from an OpenAI-compatible server, scores from a pooling one
    upstream: str | None = Field(
        None, description="OpenAI base URL of a policy server, http://host:8000/v1 (no engine)"
    )
    upstream_api_key: str | None = Field(None, description="Bearer key for --upstream")
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
    verifier_api_key: str | None = Field(None, description="Bearer key for --verifier-url")
    verifier_model: str | None = Field(
        None, description="model name on --verifier-url (default: its first /v1/models entry)"
    )

    # security and limits (issue 6)
    api_keys: tuple[str, ...] = Field(
        (), description="accepted Bearer keys (repeat --api-key; BON_API_KEYS comma-separated)"
    )
    metrics_require_key: bool = Field(False, description="ask for an API key on /metrics too")
    max_request_bytes: int = Field(2_000_000, ge=1024, description="largest request body (413)")
    max_messages: int = Field(1024, ge=1, description="most messages in one chat request")
    max_message_chars: int = Field(
        1_000_000, ge=1, description="longest message content / prompt, in characters"
    )
    max_sequences_in_flight: int = Field(
        1024, ge=0, description="admission bound: sequences (requests x best_of) in flight; 0 none"
    )
    admission_timeout: float = Field(
        0.0, ge=0, description="seconds a request may wait for admission before its 429"
    )
    request_timeout: float | None = Field(
        None, gt=0, description="per-request deadline in seconds (504, engine work aborted)"
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
    answer_rules: tuple[str, ...] = DEFAULT_RULES
    max_tokens_limit: int | None = Field(None, ge=1, description="cap on max_tokens per request")
    keepalive_interval_s: float = Field(2.0, gt=0, description="SSE comment period while sampling")

    # engine
    seed: int = 0
    max_model_len: int | None = Field(None, ge=16)
    dtype: str = "auto"
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    tensor_parallel_size: int = Field(1, ge=1)
    kv_cache_gib: int = Field(1, ge=1, description="KV cache GiB on CPU (VLLM_CPU_KVCACHE_SPACE)")
    enforce_eager: bool = False

    @field_validator("answer_rules", mode="before")
    @classmethod
    def _rules(cls, value: object) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        return check_rules(list(value))  # type: ignore[arg-type]

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.default_best_of > self.max_best_of:
            raise ValueError(
                f"default_best_of ({self.default_best_of}) exceeds max_best_of ({self.max_best_of})"
            )
        if self.default_selector is not None:
            from .selectors import SELECTORS, check_selector

            check_selector(self.default_selector)
            if SELECTORS[self.default_selector].needs_verifier and self.verifier is None:
                raise ValueError(f"default_selector {self.default_selector!r} needs --verifier")
        return self

    @property
    def model_name(self) -> str:
        if self.served_model_name:
            return self.served_model_name
        if Path(self.model) == EMBEDDED_POLICY:
            return EMBEDDED_POLICY_NAME
        return self.model.rstrip("/")
