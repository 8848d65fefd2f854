"""A dataset file as a Task: each format and shape, the held-out part, and the bad files (one
clear error naming the row and the field, nothing written). No engine, no network."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from bon_server.tasks import get_task
from bon_server.tasks.args import add_task_args, task_flags, task_from_args
from bon_server.tasks.base import EVAL_SEED, held_out_questions, training_problems
from bon_server.tasks.dataset import DatasetError, DatasetTask

ROOT = Path(__file__).resolve().parents[1]
GSM8K = [{"question": "What is 600 * 2 + 34?", "answer": "600 * 2 = 1200\n1200 + 34 = 1234\n"
          "#### 1,234"},
         {"question": "What is 3 + 4?", "answer": "3 + 4 = 7\n#### 7"},
         {"question": "What is 1 - 9?", "answer": "#### -8"}]
MATH = [{"problem": "Half of 2468?", "solution": "Halve it: $\\boxed{\\frac{2468}{2}}$."},
        {"problem": "What is 3 + 4?", "solution": "It is \\boxed{7.0}"},
        {"problem": "What is 1 - 9?", "solution": "So $\\boxed{-8}$"}]
PLAIN = [{"prompt": "2 + 2 =", "answer": 4}, {"prompt": "1 / 2 =", "answer": "0.5"}]


def write(path: Path, rows: list[dict]) -> str:
    """``rows`` in the format the suffix names."""
    import pandas as pd

    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    elif path.suffix == ".parquet":
        pd.DataFrame(rows).to_parquet(path)
    else:  # a saved datasets directory
        from datasets import Dataset

        Dataset.from_list(rows).save_to_disk(str(path))
    return str(path)


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet", ""])
def test_every_format_loads_the_same_problems(tmp_path, suffix):
    task = DatasetTask(write(tmp_path / f"gsm8k{suffix}", GSM8K), held_out=0)
    assert task.shape == "gsm8k" and task.name == "dataset:gsm8k"
    assert [p.question for p in task._all] == [r["question"] for r in GSM8K]
    assert [p.answer for p in task._all] == ["1,234", "7", "-8"]
    assert task._all[0].solution == "600 * 2 = 1200\n1200 + 34 = 1234"
    assert task.check(task._all[0], "The answer is 1234.")
    assert not task.check(task._all[0], "The answer is 1243.")


def test_math_shape_reads_the_last_box_and_the_answer_column(tmp_path):
    task = DatasetTask(write(tmp_path / "m.jsonl", MATH), held_out=0)
    assert task.shape == "math" and [p.answer for p in task._all] == ["\\frac{2468}{2}", "7.0",
                                                                       "-8"]
    assert task.check(task._all[0], "so \\boxed{1234}") and task.check(task._all[1], "= 7")
    assert task.reference(task._all[0]) == MATH[0]["solution"]  # the worked solution, for SFT
    rows = [{"problem": r["problem"], "answer": a} for r, a in zip(MATH, ["1234", "7", "-8"],
                                                                   strict=True)]
    task = DatasetTask(write(tmp_path / "ma.jsonl", rows), held_out=0)
    assert task.answer_field == "answer" and task._all[0].answer == "1234"


def test_plain_shape_and_field_overrides(tmp_path):
    task = DatasetTask(write(tmp_path / "p.jsonl", PLAIN), held_out=0)
    assert task.shape == "plain" and [p.answer for p in task._all] == ["4", "0.5"]
    assert task.check(task._all[1], "The answer is \\frac{1}{2}.")
    rows = [{"q": r["prompt"], "gold": r["answer"], "other": 1} for r in PLAIN]
    with pytest.raises(DatasetError, match="--prompt-field"):
        DatasetTask(write(tmp_path / "o.jsonl", rows))
    task = DatasetTask(str(tmp_path / "o.jsonl"), prompt_field="q", answer_field="gold",
                       held_out=0)
    assert [p.question for p in task._all] == ["2 + 2 =", "1 / 2 ="]
    # one override: the other field by shape
    task = DatasetTask(write(tmp_path / "o2.jsonl", [{"question": "x?", "gold": "#### 3"}]),
                       answer_field="gold", held_out=0)
    assert task._all[0].answer == "3"


BAD = [  # rows, or raw text, and what the one error says
    ([GSM8K[0], {"question": "What is 3 + 4?"}], r"bad\.jsonl:2: missing field 'answer'"),
    ("", r"bad\.jsonl: the file is empty"),
    ("\n\n", r"bad\.jsonl: the file is empty"),
    ([GSM8K[0], {"question": 7, "answer": "#### 7"}],
     r"bad\.jsonl:2: field 'question' must be a string, not int"),
    ([GSM8K[0], {"question": "x?", "answer": ["7"]}],
     r"bad\.jsonl:2: field 'answer' must be a string or a number, not list"),
    ([GSM8K[0], {"question": "x?", "answer": {"n": 7}}, GSM8K[1]],
     r"bad\.jsonl:2: field 'answer' must be a string or a number, not dict"),
    ([GSM8K[0], {"question": "x?", "answer": "seven, I think"}],
     r"bad\.jsonl:2: field 'answer' has no reference answer \(want an answer ending '#### N'\)"),
    ([GSM8K[0], GSM8K[1], {"question": "x?", "answer": "#### \\frac{"}],
     r"bad\.jsonl:3: field 'answer': math-verify cannot parse the reference"),
    ([MATH[0], {"problem": "y?", "solution": "no box"}], r"bad\.jsonl:2: .*\\boxed"),
    ('{"question": "a", "answer": "#### 1"}\nnot json\n', r"bad\.jsonl:2: not JSON"),
    ([{"text": "a", "label": 1}], r"bad\.jsonl:1: no known shape"),
]


@pytest.mark.parametrize(("rows", "message"), BAD)
def test_a_bad_file_gets_one_clear_error(tmp_path, rows, message):
    path = tmp_path / "bad.jsonl"
    if isinstance(rows, str):
        path.write_text(rows)
    else:
        write(path, rows)
    with pytest.raises(DatasetError, match=message):
        DatasetTask(str(path))


def test_csv_and_parquet_errors_name_their_row(tmp_path):
    rows = [GSM8K[0], {"question": "x?", "answer": "no marker"}]
    with pytest.raises(DatasetError, match=r"bad\.csv:3: field 'answer' has no reference"):
        DatasetTask(write(tmp_path / "bad.csv", rows))  # line 3: after the header
    with pytest.raises(DatasetError, match=r"bad\.parquet: row 1: field 'answer'"):
        DatasetTask(write(tmp_path / "bad.parquet", rows))
    with pytest.raises(DatasetError, match="unknown format '.txt'"):
        DatasetTask(str(tmp_path / "x.txt") if (tmp_path / "x.txt").write_text("a") else "")
    with pytest.raises(DatasetError, match="no such file"):
        DatasetTask(str(tmp_path / "missing.jsonl"))


def test_a_bad_dataset_stops_sample_before_anything_is_written(tmp_path):
    from verifier_training.data import sampling

    bad = tmp_path / "bad.jsonl"
    write(bad, [GSM8K[0], {"question": "x?"}])
    out = tmp_path / "out" / "samples.jsonl"
    with pytest.raises(SystemExit, match=r"bad\.jsonl:2: missing field 'answer'"):
        sampling.main(["--dataset", str(bad), "--out", str(out), "-k", "2"])
    assert not out.exists() and not out.parent.exists()


def test_the_held_out_part_is_fixed_and_kept_out_of_training(tmp_path):
    path = ROOT / "examples" / "gsm8k_arith.jsonl"
    task = DatasetTask(str(path))
    held = held_out_questions(task)
    assert len(held) == 7 and held == {p.question for p in task.problems(None, EVAL_SEED)}
    # chosen by the question's hash: not by the file's order, --limit or --seed
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    flipped = DatasetTask(write(tmp_path / "flipped.jsonl", rows[::-1]))
    assert held_out_questions(flipped) == held
    half = DatasetTask(str(path), limit=20)
    assert held_out_questions(half) == held & {r["question"] for r in rows[:20]}
    for seed in (0, 101, 7):
        train, skipped = training_problems(task, 1000, seed, held)
        assert len(train) == 33 and skipped == 0 and not held & {p.question for p in train}
    assert [p.question for p in task.problems(5, 101)] == \
        [p.question for p in task.problems(5, 101)]
    assert task.problems(5, 101) != task.problems(5, 102)  # --seed picks the problems
    assert len(DatasetTask(str(path), held_out=3).held_out) == 3
    assert len(DatasetTask(str(path), held_out=0).training) == 40
    limited = DatasetTask(str(path), limit=10, held_out=0)
    assert [p.question for p in limited.training] == [r["question"] for r in rows[:10]]


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_task_args(p)
    return p.parse_args(argv)


def test_one_set_of_task_flags(tmp_path):
    path = write(tmp_path / "mine.csv", PLAIN)
    args = parse(["--dataset", path, "--checker", "exact", "--system-prompt", "Be brief.",
                  "--held-out", "0", "--step-separator", "line"])
    task = task_from_args(args)
    assert get_task("dataset:mine") is task  # registered: its records resolve to it
    assert task.checker.name == "exact" and task.system_prompt == "Be brief."
    assert task.step_separator == "\n" and task.check_step(task._all[0], ["a"], 0) is None
    assert parse(task_flags(args)) == args  # passed on to another command as they came
    assert task_from_args(parse(["--task", "countdown"])).name == "countdown"
    with pytest.raises(SystemExit):
        parse(["--task", "arith", "--dataset", path])  # one or the other
    with pytest.raises(SystemExit, match="unknown checker"):
        task_from_args(parse(["--dataset", path, "--checker", "sympy"]))


def test_records_of_an_unloaded_dataset_say_what_to_pass():
    with pytest.raises(ValueError, match="--dataset PATH"):
        get_task("dataset:never-loaded")


def test_the_load_tester_reads_a_dataset_file(tmp_path):
    from loadtest.datasets import load_dataset

    items = load_dataset(write(tmp_path / "lt.parquet", GSM8K), 4)
    assert [i.question for i in items] == [r["question"] for r in GSM8K] + [GSM8K[0]["question"]]
    assert items[0].messages == ({"role": "user", "content": GSM8K[0]["question"]},)
    assert items[0].is_right("\\boxed{1234}") and not items[0].is_right("The answer is 1,243.")


def test_the_example_files_check_against_the_arithmetic_world():
    from bon_server.tasks.arith import parse_question

    for name in ("gsm8k_arith.jsonl", "math_arith.jsonl"):
        task = DatasetTask(str(ROOT / "examples" / name), held_out=0)
        assert len(task._all) == 40
        forms = {p.answer for p in task._all}
        assert any("," in a for a in forms) and any(a.endswith(".0") for a in forms)
        for p in task._all:
            value = parse_question(p.question).answer
            assert task.check(p, f"The answer is {value}.")
            assert not task.check(p, f"The answer is {value + 1}.")
    assert any("frac" in p.answer for p in DatasetTask(str(ROOT / "examples" / name))._all)


def test_labels_roll_out_from_paragraph_prefixes_and_grade_by_the_datasets_checker(tmp_path):
    """label-steps cuts a dataset's completions at its separator, rolls out from
    ``join_steps`` prefixes, and grades rollouts by the dataset's reference, not by the world
    whose prompt the question happens to look like."""
    import asyncio
    from types import SimpleNamespace

    from verifier_training.data.labels import GeneratorRollout, label_candidate
    from verifier_training.data.records import SampleRecord

    # an arithmetic-shaped question whose file says the answer is 6 (arith would say 5)
    task = task_from_args(parse(["--dataset", write(tmp_path / "odd.jsonl", [
        {"question": "What is 2 + 3?", "answer": "#### 6"}]), "--held-out", "0"]))
    roller = GeneratorRollout(SimpleNamespace(tokenizer=None), 2, task=task)
    assert roller.check("What is 2 + 3?", "6", "The answer is 6.")
    assert not roller.check("What is 2 + 3?", "6", "The answer is 5.")

    seen: list[str] = []

    async def rollout(question: str, reference: str, prefix: str) -> int:
        seen.append(prefix)
        return 1

    record = SampleRecord("train-0-00000", "What is 2 + 3?", "6", "First.\nStill first.\n\n"
                          "Second.\n\nThe answer is 6.", "6", True, "p", 1.0, 1.0, 64, 0, 0,
                          "stop", 9, task.name)
    lab = asyncio.run(label_candidate(record, rollout, 2, separator=task.step_separator))
    assert lab.steps == ("First.\nStill first.", "Second.", "The answer is 6.")
    assert seen == ["First.\nStill first.\n\n", "First.\nStill first.\n\nSecond.\n\n"]
    assert lab.counts == (1, 1, 2)


def test_sampled_records_of_a_dataset_keep_todays_fields(tmp_path):
    """``sample_problem_records`` on a dataset task with a scripted generator: the record
    fields are today's, ``correct`` is math-verify's against the file's reference, and a
    ``--system-prompt`` heads the chat the policy is sent."""
    import asyncio

    from bon_server.generators.fake import ScriptedGenerator
    from bon_server.types import SamplingParams
    from verifier_training.data.records import read_samples, write_jsonl
    from verifier_training.data.sampling import problem_stream, sample_problem_records

    task = task_from_args(parse(["--dataset", write(tmp_path / "g.jsonl", GSM8K),
                                 "--held-out", "0", "--system-prompt", "Think."]))
    gen = ScriptedGenerator(["The answer is 1234.", "\\boxed{7}", "The answer is -8."])
    problems = problem_stream(task, None, 101)
    records = asyncio.run(sample_problem_records(
        gen, problems, split="train", problem_seed=101, policy="p", k=3, task=task,
        params=SamplingParams(temperature=1.0, top_p=1.0, max_tokens=64), progress=False))
    assert len(records) == 9 and {r.task for r in records} == {"dataset:g"}
    by_question = {p["question"]: p for p in GSM8K}
    for r in records:
        assert r.reference == {"What is 600 * 2 + 34?": "1,234", "What is 3 + 4?": "7",
                               "What is 1 - 9?": "-8"}[r.question] and r.question in by_question
        value = {"1,234": 1234, "7": 7, "-8": -8}[r.reference]
        assert r.correct == (str(value) in r.completion)
    assert all(c.prompt.messages[0].content == "Think." for c in gen.calls)
    write_jsonl(str(tmp_path / "r.jsonl"), records)
    assert read_samples(str(tmp_path / "r.jsonl")) == records
    assert records[0].problem() == task.parse(records[0].question)


def test_a_math_checked_datasets_records_vote_as_the_server_votes(tmp_path):
    """With the math checker a dataset votes by the math rule: the records' ``answer`` of one
    problem's candidates that math-verify calls equal is one key (the majority replays and
    curves count what ``--answer-rules math`` counts); ``exact`` keeps the text rules."""
    import asyncio

    from bon_server.generators.fake import ScriptedGenerator
    from bon_server.types import SamplingParams
    from verifier_training.data.sampling import problem_stream, sample_problem_records

    texts = ["The answer is \\boxed{\\frac{2468}{2}}.", "The answer is 1234.0.",
             "The answer is 1,234.", "The answer is 7."]
    for checker, distinct in (("math", 2), ("exact", 3)):
        task = task_from_args(parse(["--dataset", write(tmp_path / f"{checker}.jsonl", GSM8K),
                                     "--held-out", "0", "--checker", checker, "--limit", "1"]))
        records = asyncio.run(sample_problem_records(
            ScriptedGenerator(texts), problem_stream(task, None, 101), split="train",
            problem_seed=101, policy="p", k=4, task=task,
            params=SamplingParams(temperature=1.0, top_p=1.0, max_tokens=64), progress=False))
        assert len({r.answer for r in records}) == distinct, (checker, [r.answer for r in records])


@pytest.mark.parametrize("command", ["sample", "passk", "label-steps", "evaluate", "pipeline",
                                     "rsft", "dpo", "distill", "export"])
def test_every_command_that_takes_a_task_takes_the_same_dataset_flags(command, capsys):
    from verifier_training.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--task", "--dataset PATH", "--prompt-field", "--answer-field", "--checker",
                 "--limit", "--held-out", "--system-prompt", "--step-separator"):
        assert flag in text, (command, flag)
