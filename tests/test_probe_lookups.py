"""probe-lookups: where a paths policy's loss sits, and what it writes."""

from __future__ import annotations

import math

import pytest
import torch

from bon_server.tasks.paths import Problem
from verifier_training.research import probe_lookups
from verifier_training.train import sft
from verifier_training.train.tokenizer import build_tokenizer

# start 12; arms 12>3>57 and 12>8>41; target 57
PROBLEM = Problem(12, 57, ((12, 3), (3, 57), (12, 8), (8, 41)))
LONG = Problem(1, 4, ((1, 2), (2, 3), (3, 4), (1, 5), (5, 6), (6, 7)))


def test_answer_positions_name_each_node_a_step_reaches():
    tok = build_tokenizer(arrows=True)
    for problem, want in ((PROBLEM, ["first", "last"]), (LONG, ["first", "middle", "last"])):
        answer = "\n".join(f"{a}>{b}" for a, b in zip(problem.path, problem.path[1:],
                                                        strict=False))
        answer += f"\nThe answer is {problem.answer}."
        tokens = tok.convert_ids_to_tokens(tok.encode(answer, add_special_tokens=False))
        kinds = probe_lookups.answer_positions(problem, tokens)
        assert [k for k in kinds if k not in (None, "answer line")] == want
        assert kinds.count("answer line") == len(problem.path)


def test_write_stats_tell_a_forged_last_edge_from_a_wrong_first_one():
    right = "12>3\n3>57\nThe answer is 12>3>57."
    forged = "12>8\n8>57\nThe answer is 12>8>57."
    invented = "12>99\n99>57\nThe answer is 12>99>57."
    wrong_end = "12>8\n8>41\nThe answer is 12>8>41."
    stats = {name: probe_lookups.write_stats(PROBLEM, text) for name, text in
             (("right", right), ("forged", forged), ("invented", invented),
              ("wrong_end", wrong_end))}
    assert stats["right"] == dict.fromkeys(stats["right"], True)
    assert stats["forged"]["first edge listed"] and stats["forged"]["ends at the target"]
    assert not stats["forged"]["every edge listed"]
    assert stats["forged"]["every edge but the last listed"] and not stats["forged"]["right"]
    assert not stats["invented"]["first edge listed"]
    assert stats["wrong_end"]["every edge listed"] and not stats["wrong_end"]["ends at the target"]
    assert probe_lookups.uniform_copy_loss(PROBLEM) == pytest.approx(math.log(5))  # 5 labels


def test_main_runs_on_a_tiny_paths_policy(tmp_path, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "policy"
    assert sft.main(["--out", str(out), "--task", "paths", "--steps", "2", "--batch-size", "4",
                     "--hidden-size", "32", "--layers", "1", "--heads", "2",
                     "--intermediate-size", "64", "--warmup-steps", "1", "--threads", "1",
                     "--no-progress", "--mimetic-init"]) == 0
    capsys.readouterr()
    assert probe_lookups.main(["--model", str(out), "--problems", "5", "--generate", "2",
                               "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "first" in printed and "uniform copy" in printed and "greedy |" in printed
