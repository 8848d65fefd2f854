"""Scorers: verifiers that give each candidate a number (higher is better)."""

from .base import Scorer

__all__ = ["Scorer"]
