"""``python -m verifier_training.research <command> [args]``: the research tools.

Probes, ceilings and hand-built weights: how the shipped paths models were made and why, not
what a user needs to train verifiers for a model. Same registry shape as
``verifier_training.__main__.COMMANDS``.
"""

from __future__ import annotations

from verifier_training.cli import dispatch
from verifier_training.research import RESEARCH

COMMANDS: dict[str, tuple[str, str]] = {
    "paths-init": ("verifier_training.research.paths_init",
                   "a paths policy's hand-built initial weights (then: sft --init DIR)"),
    "build-checker": ("verifier_training.research.built_checker",
                      "write the paths checker built into a transformer (an ORM init)"),
    "ceilings": ("verifier_training.research.ceilings",
                 "Best-of-N ceilings: exact step checker, policy"),
    "probe-steps": ("verifier_training.research.probe_steps",
                    "how learnable one-step checking is: AUC"),
    "probe-lookups": ("verifier_training.research.probe_lookups",
                      "has a paths policy learned to follow listed edges? loss per position"),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch(RESEARCH, COMMANDS, argv)


if __name__ == "__main__":
    raise SystemExit(main())
