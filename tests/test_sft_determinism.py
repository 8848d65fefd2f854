"""``python -m verifier_training sft`` is reproducible: the same seed (same torch, same thread
count) gives the same logged losses and the same weights, bit for bit; another seed does not.

Each run is the real command in a subprocess (fresh global RNG state, as a user runs it),
tiny enough to take seconds: the flags of ``tests/test_sft.py::test_main_smoke``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from conftest import ROOT
from safetensors.torch import load_file

TINY = [
    "--steps", "3", "--batch-size", "4", "--hidden-size", "32", "--layers", "1",
    "--heads", "2", "--intermediate-size", "64", "--warmup-steps", "1",
    "--threads", "1", "--no-progress",
]


def train(out: Path, seed: int) -> tuple[list[str], dict[str, torch.Tensor]]:
    """One run: its loss lines ("step N  loss X  lr Y", and the final smoothed loss) and
    its saved weights."""
    cmd = [sys.executable, "-m", "verifier_training", "sft", "--out", str(out),
           "--seed", str(seed), *TINY]
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    losses = [
        line.split(";")[-1].strip() if line.startswith("trained ") else line.strip()
        for line in done.stdout.splitlines()
        if line.startswith("step ") or line.startswith("trained ")  # "trained" has wall time
    ]
    assert len(losses) == 3, done.stdout  # step 0, step 2 (the last), the final smoothed loss
    return losses, load_file(out / "model.safetensors")


def test_the_same_seed_gives_the_same_losses_and_weights(tmp_path):
    losses_a, weights_a = train(tmp_path / "a", seed=7)
    losses_b, weights_b = train(tmp_path / "b", seed=7)
    assert losses_a == losses_b
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        assert torch.equal(weights_a[name], weights_b[name]), name
    # and the comparison can tell runs apart: another seed, other weights
    _, weights_c = train(tmp_path / "c", seed=8)
    assert any(not torch.equal(weights_a[k], weights_c[k]) for k in weights_a)
