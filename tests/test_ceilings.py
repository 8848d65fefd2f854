"""The ceilings command: untrained scorers on real samples of the embedded policy."""

from __future__ import annotations

import json

from bon_server.tasks.arith import Problem, reference_solution
from verifier_training.data.records import SampleRecord, write_jsonl
from verifier_training.research.ceilings import greedy_steps_ok, main, policy_token_stats

POLICY = "bon_server/embedded/arith-policy"


def test_greedy_steps_ok_reads_only_the_results():
    completion = "4 * 23 = 92\nThe answer is 92."
    stats = [(0.0, True)] * len(completion)
    assert greedy_steps_ok(completion, stats)
    wrong_result = list(stats)
    wrong_result[completion.index("92")] = (-3.0, False)
    assert not greedy_steps_ok(completion, wrong_result)
    wrong_operand = list(stats)
    wrong_operand[0] = (-3.0, False)  # before the "= ": not a result
    assert greedy_steps_ok(completion, wrong_operand)


def test_policy_prefers_its_reference_solution_to_a_corrupted_one():
    p = Problem((17, 4, 23, 9), ("+", "*", "-"))
    good = reference_solution(p)
    bad = good.replace("4 * 23 = 92", "4 * 23 = 97")
    stats = policy_token_stats(POLICY, [(p.question, good), (p.question, bad)], batch_size=2)
    assert len(stats[(p.question, good)]) == len(good)  # one token per character
    assert sum(lp for lp, _ in stats[(p.question, good)]) > sum(
        lp for lp, _ in stats[(p.question, bad)])


def test_ceilings_table_on_a_few_records(tmp_path, capsys):
    rows = []
    for i, (operands, ops) in enumerate([((17, 4), ("*",)), ((5, 9, 2), ("+", "-"))]):
        p = Problem(operands, ops)
        good = reference_solution(p)
        first = good.split("\n")[0]
        a_op_b, c = first.split(" = ")
        bad = good.replace(first, f"{a_op_b} = {int(c) + 1}")
        for j, text in enumerate([good, bad, bad, good]):
            ok = text == good
            rows.append(SampleRecord(
                problem_id=f"p{i}", question=p.question, reference=str(p.answer),
                completion=text, answer=str(p.answer) if ok else "x", correct=ok,
                policy=POLICY, temperature=1.0, top_p=1.0, max_tokens=64, seed=0,
                sample_index=j, finish_reason="stop", completion_tokens=len(text)))
    records = tmp_path / "r.jsonl"
    write_jsonl(str(records), rows)
    out = tmp_path / "c.json"
    assert main(["--records", str(records), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["k"] == 4
    # the exact checker always finds a correct candidate when there is one
    assert result["curve"]["exact_step_checker"]["4"] == 1.0
    assert result["curve"]["oracle"]["4"] == 1.0
    # the add/sub checker is blind to the corrupted `17 * 4` line, not to the `5 + 9` one
    curve = result["curve"]
    assert curve["addsub_step_checker"]["2"] < curve["exact_step_checker"]["2"]
    assert "policy_mean_logprob" in capsys.readouterr().out
