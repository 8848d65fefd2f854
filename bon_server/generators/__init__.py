"""Generators: where candidates come from (in-process vLLM, or an upstream server)."""

from .base import Generator, PreparedRequest

__all__ = ["Generator", "PreparedRequest"]
