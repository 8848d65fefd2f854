"""Print the README's post-training tables from the runs docs/measure_post_training.sh made."""

from __future__ import annotations

import json
import os
import sys

ROOT = sys.argv[1] if len(sys.argv) > 1 else "runs"
ARMS = [
    ("rsft/checker", "RSFT, checker (STaR)"),
    ("rsft/checker-steps", "RSFT, checker + exact steps"),
    ("rsft/verifier", "RSFT, verifier (ORM, weighted majority, top half)"),
    ("rsft/random", "control: random samples"),
    ("rsft/reference", "control: reference solutions"),
    ("rsft/dpo-checker", "DPO, checker pairs"),
    ("rsft/dpo-rpo", "DPO + NLL of chosen (RPO), checker pairs"),
]


def load(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except OSError:
        return None


def cells(m: dict | None) -> str:
    if not m:
        return "| | |"
    return f"{m['pass@1']:.3f} | {m['pass@16']:.3f} | {m['majority@16']:.3f}"


def main() -> None:
    start = None
    print("| arm | round | pass@1 | pass@16 | majority@16 | kept (right through a forged step) "
          "| round minutes |")
    print("|---|---|---|---|---|---|---|")
    for path, name in ARMS:
        s = load(os.path.join(ROOT, path, "summary.json"))
        if not s:
            continue
        if start is None:
            start = s["start"]
            print(f"| the shipped countdown-policy | 0 | {cells(start)} | | |")
        for row in s["rounds"]:
            kept = row.get("kept", row.get("pairs"))
            what = f"{kept} pairs" if "pairs" in row else f"{kept}"
            if row.get("kept_right") is not None and row.get("kept_right") != 1.0:
                what += f", {row['kept_right']:.0%} right"
            if "right_with_a_wrong_step" in row:
                what += f" ({row['right_with_a_wrong_step']})"
            print(f"| {name} | {row['round']} | {cells(row.get('after'))} | {what} | "
                  f"{row['round_seconds'] / 60:.1f} |")
    more = load(os.path.join(ROOT, "rsft/more-sft/passk.json"))
    if more:
        print(f"| control: more `sft` (fresh problems, 150 steps) | 1 | "
              f"{more['pass@1']:.3f} | {more['pass@16']:.3f} | {more['majority@16']:.3f} | | |")


if __name__ == "__main__":
    main()
