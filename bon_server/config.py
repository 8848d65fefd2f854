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
