"""Scorers: verifiers that give each candidate a number (higher is better)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Scorer

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["Scorer", "build_scorer"]


def build_scorer(settings: Settings) -> Scorer | None:
    """The verifier the settings name (None without one): an ORM or a PRM, loaded in-process,
    or, with ``--verifier-url``, scored by a vLLM pooling server (``--verifier`` then gives
    only the tokenizer and config, so the text is laid out here exactly as in-process)."""
    if settings.verifier is None:  # Settings refuses verifier_url without it
        return None
    from .plugins import build_plugin, is_plugin
    from .steps import resolve_separator

    if is_plugin(settings.verifier):  # task:<world>, py:module:function
        return build_plugin(settings.verifier, None, resolve_separator(settings.step_separator))
    if settings.verifier_url is not None:
        from .remote import RemoteORMScorer, RemotePRMScorer

        remote = RemoteORMScorer if settings.verifier_kind == "orm" else RemotePRMScorer
        return remote.from_settings(settings)
    where = {"device": settings.verifier_device, "dtype": settings.verifier_dtype,
             "batch_size": settings.verifier_batch_size}
    if settings.verifier_kind == "orm":
        from .orm import ORMScorer

        return ORMScorer.from_pretrained(
            settings.verifier, share_prefix=settings.verifier_share_prefix, **where
        )
    from .prm import PRMScorer

    return PRMScorer.from_pretrained(
        settings.verifier, step_format=settings.verifier_step_format,
        aggregation=settings.prm_aggregation,
        step_separator=resolve_separator(settings.step_separator),
        trust_remote_code=settings.verifier_trust_remote_code, **where,
    )
