"""train-orm in two processes on the CPU (gloo), launched as a user launches it: ``torchrun
--standalone --nproc_per_node 2`` and ``accelerate launch --multi_gpu --num_processes 2``.

Both ranks run (each prepares the data, the record says two processes), the model is saved
once, and the loss on the training records falls. That the ranks really train together is
checked by the numbers: one step of two processes on batches of 4 lands on the weights of one
process on the batch of 8 they halve (DDP averages the two halves' gradients), where rank 0's
half alone moves the weights by about the learning rate (1e-3).

Each launch is a subprocess group with a hard timeout that fails the test (the group killed:
a rendezvous that never completes must not hang the suite); one thread per process.
``accelerate launch --cpu --num_processes 2`` is not used: it starts ONE process (accelerate
wants MPI for several CPU processes).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import arith_records, free_port
from safetensors.torch import load_file
from tiny_models import save_tiny
from transformers import AutoModelForSequenceClassification, LlamaForCausalLM

from bon_server.scorers.orm import ORMScorer, format_for_orm
from verifier_training.data.records import read_samples, write_jsonl
from verifier_training.train import orm as train_orm
from verifier_training.train.tokenizer import build_tokenizer

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_TIMEOUT_S = 300


def launcher(name: str) -> list[str]:
    """The launch command of two CPU processes (a real free port for accelerate's; torchrun's
    --standalone picks its own)."""
    if name == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2"]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
            "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no", "--main_process_port", str(free_port())]


def launch(name: str, argv: list[str], log: Path) -> str:
    """``LAUNCHER -m verifier_training train-orm ARGV``: its output; the test fails on a
    non-zero exit or after ``LAUNCH_TIMEOUT_S`` (the launcher and its workers killed)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                        os.environ.get("PYTHONPATH")])))
    cmd = [*launcher(name), "-m", "verifier_training", "train-orm", *argv]
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=LAUNCH_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"{name} did not finish in {LAUNCH_TIMEOUT_S} s:\n"
                        f"{log.read_text()[-3000:]}")
    text = log.read_text()
    assert code == 0, f"{name} exited {code}:\n{text[-3000:]}"
    return text


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A tiny random policy and 12 problems x 3 candidates (a + b * c, one right)."""
    tmp = tmp_path_factory.mktemp("launch")
    policy = save_tiny(LlamaForCausalLM, tmp / "policy", build_tokenizer(),
                       tie_word_embeddings=True)
    samples, _ = arith_records()
    write_jsonl(str(tmp / "samples.jsonl"), samples)
    return {"policy": str(policy), "samples": str(tmp / "samples.jsonl")}


def argv(data: dict[str, str], out: Path, *extra: str) -> list[str]:
    return ["--records", data["samples"], "--base", data["policy"], "--out", str(out),
            "--val-frac", "0", "--no-progress", *extra]


def bce(model, data: dict[str, str]) -> float:  # type: ignore[no-untyped-def]
    """Mean BCE of an ORM on the training records, read as the server reads it."""
    records = read_samples(data["samples"])
    tok = build_tokenizer()
    probs = ORMScorer(model.eval(), tok, batch_size=64).score_texts(
        [format_for_orm(tok, r.prompt, r.completion) for r in records])
    y = torch.tensor([float(r.correct) for r in records])
    return torch.nn.functional.binary_cross_entropy(torch.tensor(probs), y).item()


@pytest.mark.parametrize("name", ["torchrun", "accelerate"])
def test_two_processes_train_an_orm_and_save_it_once(data, tmp_path, name):
    out = tmp_path / "orm"
    log = launch(name, argv(data, out, "--steps", "10", "--batch-size", "4", "--lr", "3e-3"),
                 tmp_path / "launch.log")
    # every rank read and prepared the data; only the main process reports and saves
    assert sum(line.startswith("data: records 36") for line in log.splitlines()) == 2
    assert log.count(f"saved to {out}") == 1
    record = json.loads((out / "training_config.json").read_text())
    assert record["resolved"]["processes"] == 2
    assert record["resolved"]["steps_done"] == 10
    assert not (out / "checkpoints").exists()
    torch.manual_seed(0)  # the run's head init: --seed 0
    before = AutoModelForSequenceClassification.from_pretrained(data["policy"], num_labels=1)
    after = AutoModelForSequenceClassification.from_pretrained(out)
    assert bce(after, data) < bce(before, data) - 0.02


def test_two_processes_average_their_gradients(data, tmp_path):
    # --bucket 1: a batch of 8 is the first 8 of the shuffled order; ranks 0 and 1 take the
    # two batches of 4 that halve it
    base = ["--steps", "1", "--bucket", "1", "--lr", "1e-3", "--grad-clip", "0"]
    two, one = tmp_path / "two", tmp_path / "one"
    launch("torchrun", argv(data, two, *base, "--batch-size", "4"), tmp_path / "two.log")
    assert train_orm.main(argv(data, one, *base, "--batch-size", "8", "--threads", "1")) == 0
    start = load_file(Path(data["policy"]) / "model.safetensors")
    a, b = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert a.keys() == b.keys()
    moved = sum(int((a[k] - start[k]).abs().max() > 5e-4) for k in start if k in a)
    assert moved > 5  # the step moved the weights (a 1e-3 Adam step)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=2e-5, msg=k)
