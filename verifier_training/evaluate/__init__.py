"""Evaluation: ``passk`` (a policy alone), ``curves`` (Best-of-N with trained verifiers, F1,
plots), ``adaptive`` and ``prune`` (the server's ways of spending less, replayed over
recorded samples to tune them)."""
