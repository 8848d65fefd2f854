"""How candidates are drawn: all at once (fixed N), or in waves until the choice is settled.

    fixed      one generator call with n = best_of (``BestOfN.run``'s default)
    adaptive   waves of ``wave`` candidates, at most ``best_of`` in all; after each wave a
               stopping rule looks at what is there (``rules.py``) and sampling stops once
               the selection is settled (Adaptive-Consistency, Aggarwal et al. 2023;
               Early-Stopping Self-Consistency, Li et al. 2024)
    prune      every candidate started as its own engine request; at step boundaries the
               verifier ranks the unfinished ones and the weakest are aborted (``prune.py``;
               Speculative Rejection, Sun et al. 2024)
    steps      beam search, DVTS and particle filtering: candidates grown one step at a time
               under a step scorer (``steps.py``; Snell et al. 2024, Puri et al. 2025)

This package knows nothing of HTTP; the pipeline asks it what to do next.
"""

from __future__ import annotations

from .prune import Prune, Pruned, draw_pruned
from .rules import (
    ADAPTIVE_SELECTORS,
    SEED_STRIDE,
    Adaptive,
    beta_confidence,
    should_stop,
    wave_sizes,
)
from .steps import METHODS, STEP_METHODS, Beam, Searched, StepSearch, check_search, run_search

__all__ = [
    "ADAPTIVE_SELECTORS",
    "METHODS",
    "SEED_STRIDE",
    "STEP_METHODS",
    "Adaptive",
    "Beam",
    "Searched",
    "StepSearch",
    "check_search",
    "run_search",
    "Prune",
    "Pruned",
    "beta_confidence",
    "draw_pruned",
    "should_stop",
    "wave_sizes",
]
