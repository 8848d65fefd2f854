"""Training tools for ``bon``: data, policies and verifiers for a world, and how well they choose.

Arranged by stage, each a subpackage:

- ``data``: sample records (the source of truth), sampling them from a policy, step labels;
- ``train``: the policy (SFT), the outcome and process reward models, the tokenizer, on the
  ``transformers.Trainer`` rails they share (``train/trainer.py``);
- ``evaluate``: pass@k, Best-of-N curves and diagnostics, replays of the server's adaptive
  sampling and pruning;
- ``posttrain``: rejection-sampling fine-tuning, DPO, distillation, data set export;
- ``pipeline``: sample -> label -> train ORM/PRM -> evaluate, in one command.

``research`` holds probes, ceilings and hand-built weights. It imports the rest; nothing
else imports it. Run ``python -m verifier_training <command>`` (or
``python -m verifier_training.research <command>``); ``--help`` lists the commands.
"""
