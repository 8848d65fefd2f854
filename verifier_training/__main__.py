"""``python -m verifier_training <command> [args]``: one entry point for the training tools.

Commands are looked up in ``COMMANDS`` (name -> module path); each module has a
``main(argv) -> int``. Modules are imported only when their command runs, so a command that
needs vLLM does not slow down one that does not.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "sft": ("verifier_training.sft", "train a world's policy by supervised fine-tuning"),
    "passk": ("verifier_training.passk", "pass@1, pass@k and majority@k of a policy (vLLM)"),
    "sample": ("verifier_training.sampling", "sample K candidates per problem into raw records"),
    "label-steps": ("verifier_training.labels", "Monte-Carlo step labels (k-of-M) for records"),
    "build-checker": ("verifier_training.built_checker",
                      "write the paths checker built into a transformer (an ORM init)"),
    "train-orm": ("verifier_training.train_orm", "train an outcome reward model on records"),
    "train-prm": ("verifier_training.train_prm", "train a process reward model on step labels"),
    "evaluate": ("verifier_training.evaluate", "Best-of-N curves, PRM first-error F1, plots"),
    "adaptive": ("verifier_training.adaptive_sim",
                 "replay adaptive sampling's stopping rule over samples: tokens vs accuracy"),
    "prune": ("verifier_training.prune_sim",
              "replay pruning over samples: tokens vs accuracy, prefix signal by step"),
    "ceilings": ("verifier_training.ceilings", "Best-of-N ceilings: exact step checker, policy"),
    "probe-steps": ("verifier_training.probe_steps", "how learnable one-step checking is: AUC"),
    "probe-lookups": ("verifier_training.probe_lookups",
                      "has a paths policy learned to follow listed edges? loss per position"),
    "export": ("verifier_training.export", "RSFT, DPO, ORM and PRM data sets from records"),
    "rsft": ("verifier_training.rsft",
             "rejection-sampling fine-tuning rounds (TRL SFTTrainer): checker, verifier, controls"),
    "dpo": ("verifier_training.dpo", "DPO rounds on the policy's own samples (TRL DPOTrainer)"),
    "distill": ("verifier_training.distill",
                "a student learns a teacher's solutions, all or those a checker or verifier keeps"),
    "pipeline": ("verifier_training.run_pipeline", "sample -> label -> train ORM/PRM -> evaluate"),
}


def usage() -> str:
    lines = ["usage: python -m verifier_training <command> [args]", "", "commands:"]
    lines += [f"  {name:12s} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"unknown command {name!r}; valid commands: {', '.join(COMMANDS)}", file=sys.stderr)
        print(usage(), file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest)


if __name__ == "__main__":
    raise SystemExit(main())
