"""Generators: where candidates come from (in-process vLLM, or an upstream server)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Generator, PreparedRequest

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["Generator", "PreparedRequest", "build_generator"]


def build_generator(settings: Settings) -> Generator:
    """The generator the settings ask for: an upstream server with ``--upstream`` (proxy
    mode, no engine here), else the in-process vLLM engine."""
    if settings.upstream is not None:
        from .upstream import UpstreamGenerator

        return UpstreamGenerator.from_settings(settings)
    from .vllm_engine import VLLMGenerator

    return VLLMGenerator.from_settings(settings)
