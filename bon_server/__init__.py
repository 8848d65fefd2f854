"""bon: an OpenAI-compatible Best-of-N server on vLLM with trained verifiers."""

__version__ = "0.1.0"
