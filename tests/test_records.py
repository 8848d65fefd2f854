"""Raw records: JSONL round trip, refusal of foreign files, and label derivation basics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from verifier_training.data.records import (
    SampleRecord,
    StepLabelRecord,
    group_by_problem,
    read_labels,
    read_samples,
    write_jsonl,
)


def sample(pid: str = "train-101-00000", i: int = 0, **kw) -> SampleRecord:
    base = dict(
        problem_id=pid, question="What is 2 + 3?", reference="5",
        completion="= 5\nThe answer is 5.", answer="5", correct=True,
        policy="bon_server/embedded/arith-policy", temperature=1.0, top_p=1.0,
        max_tokens=128, seed=10_100_303, sample_index=i, finish_reason="stop",
        completion_tokens=18,
    )
    return SampleRecord(**{**base, **kw})


def label(**kw) -> StepLabelRecord:
    base = dict(
        problem_id="train-101-00000", sample_index=0, question="What is 2 + 3 * 4?",
        reference="14", steps=("= 2 + 12", "= 14", "The answer is 14."), counts=(3, 0, None),
        rollouts=4, inferred=(False, False, True), correct=False, policy="p", seed=0,
    )
    return StepLabelRecord(**{**base, **kw})


def test_samples_round_trip(tmp_path: Path) -> None:
    records = [sample(i=0), sample(i=1, answer=None, correct=False, completion="= ?",
                                  finish_reason="length")]
    path = str(tmp_path / "s.jsonl")
    assert write_jsonl(path, records) == 2
    assert read_samples(path) == records
    assert records[0].prompt.question() == "What is 2 + 3?"


def test_labels_round_trip_keeps_tuples_and_none(tmp_path: Path) -> None:
    path = str(tmp_path / "l.jsonl")
    write_jsonl(path, [label()])
    (back,) = read_labels(path)
    assert back == label()
    assert back.counts == (3, 0, None) and isinstance(back.steps, tuple)


def test_reading_refuses_missing_and_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    good = json.loads(Path(_write(tmp_path, sample())).read_text())
    path.write_text(json.dumps({**good, "extra": 1}) + "\n")
    with pytest.raises(ValueError, match="unknown keys"):
        read_samples(str(path))
    del good["seed"]
    path.write_text(json.dumps(good) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: .*missing keys \['seed'\]"):
        read_samples(str(path))


def _write(tmp_path: Path, record: SampleRecord) -> str:
    path = str(tmp_path / "one.jsonl")
    write_jsonl(path, [record])
    return path


def test_label_record_validates_counts() -> None:
    with pytest.raises(ValueError, match="one entry per step"):
        label(counts=(1, 2))
    with pytest.raises(ValueError, match="exactly where"):
        label(counts=(3, 0, 1))
    with pytest.raises(ValueError, match="outside"):
        label(counts=(5, 0, None))


def test_group_by_problem_keeps_order() -> None:
    records = [sample("b", 0), sample("a", 0), sample("b", 1)]
    groups = group_by_problem(records)
    assert list(groups) == ["b", "a"]
    assert [r.sample_index for r in groups["b"]] == [0, 1]


def test_labels_written_before_the_labeller_field_still_read(tmp_path: Path) -> None:
    path = tmp_path / "old.jsonl"
    data = json.loads(Path(_write_label(tmp_path, label())).read_text())
    assert data.pop("labeller") == "rollouts"
    path.write_text(json.dumps(data) + "\n")
    assert read_labels(str(path)) == [label()]
    with pytest.raises(ValueError, match="labeller"):
        label(labeller="guess")


def _write_label(tmp_path: Path, record: StepLabelRecord) -> str:
    path = str(tmp_path / "label.jsonl")
    write_jsonl(path, [record])
    return path
