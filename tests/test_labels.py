"""Monte-Carlo step labels: derivation from k-of-M counts, early stopping, prefix sharing.

Rollouts come from a hand-written function or from bon_server's ScriptedGenerator; no engine.
"""

from __future__ import annotations

import asyncio

from bon_server.generators.fake import ScriptedGenerator
from verifier_training.data.labels import (
    GeneratorRollout,
    choose_subset,
    exact_labels,
    label_candidate,
    label_records,
    prefix_text,
)
from verifier_training.data.records import SampleRecord, hard_labels, soft_labels
from verifier_training.train.tokenizer import build_tokenizer

COMPLETION = "= 2 + 12\n= 15\n= 15\nThe answer is 15."


def record(completion: str = COMPLETION, correct: bool = False, i: int = 0) -> SampleRecord:
    return SampleRecord(
        problem_id="eval-1234-00007", question="What is 2 + 3 * 4?", reference="14",
        completion=completion, answer=None, correct=correct, policy="p", temperature=1.0,
        top_p=1.0, max_tokens=128, seed=1, sample_index=i, finish_reason="stop",
        completion_tokens=len(completion),
    )


def test_hard_and_soft_labels_from_counts() -> None:
    assert hard_labels([4, 1, 0, None]) == [True, True, False, False]
    assert soft_labels([4, 1, 0, None], 4) == [1.0, 0.25, 0.0, 0.0]


def test_prefix_is_steps_joined_then_newline() -> None:
    assert prefix_text(["= 2 + 12", "= 14"], 1) == "= 2 + 12\n"
    assert prefix_text(["= 2 + 12", "= 14"], 2) == "= 2 + 12\n= 14\n"


class FakeRollout:
    """k per prefix from a table; records which prefixes were asked for."""

    def __init__(self, table: dict[str, int]) -> None:
        self.table, self.asked = table, []

    async def __call__(self, question: str, reference: str, prefix: str) -> int:
        self.asked.append(prefix)
        return self.table[prefix]


TABLE = {"= 2 + 12\n": 3, "= 2 + 12\n= 15\n": 0, "= 2 + 12\n= 15\n= 15\n": 0}


def test_early_stop_infers_bad_after_first_zero_and_last_step_from_outcome() -> None:
    roll = FakeRollout(TABLE)
    lab = asyncio.run(label_candidate(record(), roll, 4, early_stop=True))
    assert lab is not None
    assert roll.asked == ["= 2 + 12\n", "= 2 + 12\n= 15\n"]  # stopped after k == 0
    assert lab.counts == (3, 0, None, 0)
    assert lab.inferred == (False, False, True, False)
    assert lab.hard_labels() == [True, False, False, False]
    assert lab.soft_labels() == [0.75, 0.0, 0.0, 0.0]
    assert lab.first_error() == 1


def test_no_early_stop_rolls_out_every_inner_step() -> None:
    roll = FakeRollout(TABLE)
    lab = asyncio.run(label_candidate(record(), roll, 4, early_stop=False))
    assert lab is not None and sorted(roll.asked) == sorted(TABLE)
    assert lab.counts == (3, 0, 0, 0) and not any(lab.inferred)


def test_correct_candidate_last_step_is_m_and_empty_completion_is_skipped() -> None:
    roll = FakeRollout({"= 14\n": 2})
    lab = asyncio.run(label_candidate(record("= 14\nThe answer is 14.", True), roll, 4))
    assert lab is not None and lab.counts == (2, 4) and lab.first_error() == -1
    assert asyncio.run(label_candidate(record("  \n"), roll, 4)) is None


class TokenizedScripted(ScriptedGenerator):
    """The scripted fake plus the project tokenizer, which GeneratorRollout renders with."""

    tokenizer = build_tokenizer()


def test_generator_rollout_counts_correct_continuations_and_shares_prefixes() -> None:
    gen = TokenizedScripted(["= 14\nThe answer is 14.", "= 13\nThe answer is 13."])
    roller = GeneratorRollout(gen, 4, seed=0)
    recs = [record("= 2 + 12\n= 14\nThe answer is 14.", True, i) for i in range(3)]
    labels = asyncio.run(label_records(recs, roller, 4, progress=False))
    # "= 2 + 12\n" and "= 2 + 12\n= 14\n" are each rolled out once for all three records
    assert roller.requests == 2 and roller.cache_hits == 4
    assert all(lab.counts == (2, 2, 4) for lab in labels)
    (call,) = gen.calls[:1]
    ids = list(call.prompt.token_ids)
    text = build_tokenizer().decode(ids)
    assert text == "<|bos|><|user|>What is 2 + 3 * 4?<|end|><|assistant|>= 2 + 12\n"
    assert call.n == 4 and call.params.seed is not None


def test_rollout_seed_depends_on_prefix_not_on_order() -> None:
    async def seeds(order: list[str]) -> dict[str, int]:
        gen = TokenizedScripted()
        roller = GeneratorRollout(gen, 2, seed=5)
        for p in order:
            await roller("What is 1 + 1?", "2", p)
        tok = build_tokenizer()
        return {tok.decode(list(c.prompt.token_ids)).split("<|assistant|>")[1]: c.params.seed
                for c in gen.calls}

    a = asyncio.run(seeds(["= 2\n", "= 3\n"]))
    b = asyncio.run(seeds(["= 3\n", "= 2\n"]))
    assert a == b and a["= 2\n"] != a["= 3\n"]


def test_choose_subset_is_seeded_and_keeps_file_order() -> None:
    recs = [record(i=i) for i in range(20)]
    a = choose_subset(recs, 5, seed=1)
    assert a == choose_subset(recs, 5, seed=1)
    assert [r.sample_index for r in a] == sorted(r.sample_index for r in a)
    assert len(a) == 5 and choose_subset(recs, None, 0) == recs


def test_exact_labels_are_good_until_the_first_wrong_operation() -> None:
    wrong = record("4 * 23 = 92\n17 + 92 = 108\n108 - 9 = 99\nThe answer is 99.", i=0)
    right = record("3 * 4 = 12\n2 + 12 = 14\nThe answer is 14.", correct=True, i=1)
    odd = record("3 * 4 = 12\nsomething else\nThe answer is 15.", i=2)  # no arithmetic error
    empty = record("", i=3)
    labels = exact_labels([wrong, right, odd, empty])
    assert [lab.sample_index for lab in labels] == [0, 1, 2]  # nothing to label in ""
    assert labels[0].hard_labels() == [True, False, False, False]
    assert labels[0].first_error() == 1
    assert labels[1].hard_labels() == [True, True, True]
    assert labels[2].hard_labels() == [True, True, False]  # only the outcome says it is wrong
    assert all(lab.labeller == "exact" and lab.rollouts == 1 for lab in labels)
    assert labels[1].soft_labels() == [1.0, 1.0, 1.0]


def test_exact_labels_use_the_record_world_step_checker() -> None:
    from dataclasses import replace

    question = "Find a path from 12 to 57. Edges: 12>3, 3>57, 12>8, 8>41."
    base = replace(record(), question=question, reference="12>3>57", task="paths")
    right = replace(base, completion="12>3\n3>57\nThe answer is 12>3>57.", correct=True)
    arm = replace(base, completion="12>8\n8>41\nThe answer is 12>8>41.", sample_index=1)
    forged = replace(base, completion="12>3\n3>41\nThe answer is 12>3>41.", sample_index=2)
    labels = exact_labels([right, arm, forged])
    assert [lab.hard_labels() for lab in labels] == [
        [True, True, True],
        [False, False, False],  # the wrong arm: the target is unreachable from 8
        [True, False, False],  # 3>41 is not an edge
    ]


def test_agreement_counts_per_step_disagreements() -> None:
    from dataclasses import replace

    from verifier_training.data.labels import agreement

    exact = exact_labels([record("3 * 4 = 12\n2 + 12 = 15\nThe answer is 15.")])
    mc = [replace(exact[0], counts=(3, 1, 0), rollouts=4, labeller="rollouts")]
    found = agreement(exact, mc)
    # exact: good, bad, bad; rollouts: good, good, bad
    assert found == {"candidates": 1, "steps": 3, "agreement": round(2 / 3, 4),
                     "ours_good_theirs_bad": 0, "ours_bad_theirs_good": 1}
