"""How candidates are drawn: all at once (fixed N), or in waves until the choice is settled.

    fixed      one generator call with n = best_of (``BestOfN.run``'s default)
    adaptive   waves of ``wave`` candidates, at most ``best_of`` in all; after each wave a
               stopping rule looks at what is there (``rules.py``) and sampling stops once
               the selection is settled (Adaptive-Consistency, Aggarwal et al. 2023;
               Early-Stopping Self-Consistency, Li et al. 2024)

This package knows nothing of HTTP; the pipeline asks it what to do next.
"""

from __future__ import annotations

from .rules import ADAPTIVE_SELECTORS, Adaptive, beta_confidence, should_stop, wave_sizes

__all__ = ["ADAPTIVE_SELECTORS", "Adaptive", "beta_confidence", "should_stop", "wave_sizes"]
