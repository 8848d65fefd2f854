"""DPO rounds on the policy's own samples: ``rsft``'s loop with TRL's ``DPOTrainer``.

    python -m verifier_training dpo --policy bon_server/embedded/countdown-policy \\
        --rule checker --rounds 1 --out runs/dpo/checker --reuse-from runs/rsft/checker

Pairs come from the same kind of samples as ``rsft``'s (``selection.preference_pairs``):
``--rule checker`` pairs a right completion (chosen) with a wrong one (rejected);
``--rule verifier`` the verifier's top half against its bottom half. The current policy is
both the model trained and DPO's frozen reference. See ``rsft`` for the round, the
outputs and ``--reuse-from``.
"""

from __future__ import annotations

from verifier_training.posttrain import rsft


def main(argv: list[str] | None = None) -> int:
    return rsft.main(argv, method="dpo")


if __name__ == "__main__":
    raise SystemExit(main())
