"""Research scaffolding: how the shipped paths models were made, and the probes behind them.

- ``heads`` and ``paths_init``: the hand-built initial weights of the paths policy
  (``python -m verifier_training.research paths-init``; ``sft --init`` trains them);
- ``built_checker``: the paths checker written into a transformer, the paths ORM's init;
- ``ceilings``, ``probe_steps``, ``probe_lookups``: what a verifier could be worth, how
  learnable one step's check is, whether a policy follows listed edges.

This package imports the product (``verifier_training``); the product never imports it.
"""

RESEARCH = "python -m verifier_training.research"  # how its commands are run
