"""Training tools for `bon`: the arithmetic world, a tiny policy trained by SFT, and evaluation.

Run as ``python -m verifier_training <command> [args]``; see ``verifier_training.__main__``.
"""
