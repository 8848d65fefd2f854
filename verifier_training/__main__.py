"""``python -m verifier_training <command> [args]``: one entry point for the training tools.

``COMMANDS`` maps a name to (module path, one-line help); each module has a
``main(argv) -> int`` (see ``verifier_training.cli``). The research tools have their own
entry point, ``python -m verifier_training.research``.
"""

from __future__ import annotations

from verifier_training.cli import PROG, dispatch

COMMANDS: dict[str, tuple[str, str]] = {
    # data
    "sample": ("verifier_training.data.sampling",
               "sample K candidates per problem into raw records"),
    "label-steps": ("verifier_training.data.labels",
                    "step labels for records: Monte-Carlo k-of-M, or a world's exact checker"),
    # training
    "sft": ("verifier_training.train.sft", "train a world's policy by supervised fine-tuning"),
    "train-orm": ("verifier_training.train.orm", "train an outcome reward model on records"),
    "train-prm": ("verifier_training.train.prm", "train a process reward model on step labels"),
    # evaluation
    "passk": ("verifier_training.evaluate.passk",
              "pass@1, pass@k and majority@k of a policy (vLLM)"),
    "evaluate": ("verifier_training.evaluate.curves",
                 "Best-of-N curves, PRM first-error F1, plots"),
    "adaptive": ("verifier_training.evaluate.adaptive",
                 "replay adaptive sampling's stopping rule over samples: tokens vs accuracy"),
    "prune": ("verifier_training.evaluate.prune",
              "replay pruning over samples: tokens vs accuracy, prefix signal by step"),
    # post-training
    "export": ("verifier_training.posttrain.export",
               "RSFT, DPO, ORM and PRM data sets from records"),
    "rsft": ("verifier_training.posttrain.rsft",
             "rejection-sampling fine-tuning rounds (TRL SFTTrainer): checker, verifier, controls"),
    "dpo": ("verifier_training.posttrain.dpo",
            "DPO rounds on the policy's own samples (TRL DPOTrainer)"),
    "distill": ("verifier_training.posttrain.distill",
                "a student learns a teacher's solutions, all or those a checker or verifier keeps"),
    # all of it
    "pipeline": ("verifier_training.pipeline", "sample -> label -> train ORM/PRM -> evaluate"),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch(PROG, COMMANDS, argv)


if __name__ == "__main__":
    raise SystemExit(main())
