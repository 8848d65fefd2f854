"""Rebuild the example files from the arithmetic and code worlds (run from the repository root):

    python examples/make_examples.py

gsm8k_arith.jsonl: GSM8K's shape (``question``; ``answer`` = worked solution, then ``#### N``).
math_arith.jsonl: MATH's shape (``problem``; ``solution`` ending in ``\\boxed{...}``).
The references are written in equivalent forms (``1,234``, ``\\frac{2468}{2}``, ``1234.0``)
that math-verify reads as one number and a text comparison does not.
code_world.jsonl: MBPP's shape (``text``, ``code``, ``test_list``) of code-world problems: the
prompt shows four examples, the tests are the hidden ones (``code_tests.jsonl``, written by
hand, is the shape on everyday functions).
"""

import json
from pathlib import Path

from bon_server.tasks import code
from bon_server.tasks.arith import reference_solution, sample_problems

HERE = Path(__file__).parent


def gsm8k_form(n: int, i: int) -> str:
    return [f"{n:,}", f"{n}.0", str(n)][i % 3]


def math_form(n: int, i: int) -> str:
    return [f"\\frac{{{2 * n}}}{{2}}", f"{n:,}", f"{n}.0"][i % 3]


def main() -> None:
    with (HERE / "gsm8k_arith.jsonl").open("w") as f:
        for i, p in enumerate(sample_problems(40, seed=2027)):
            worked = "\n".join(reference_solution(p).splitlines()[:-1])
            f.write(json.dumps({"question": p.question,
                                "answer": f"{worked}\n#### {gsm8k_form(p.answer, i)}"}) + "\n")
    with (HERE / "math_arith.jsonl").open("w") as f:
        for i, p in enumerate(sample_problems(40, seed=2028)):
            worked = "\n\n".join(reference_solution(p).splitlines()[:-1])
            boxed = f"\\boxed{{{math_form(p.answer, i)}}}"
            solution = f"{worked}\n\nThe answer is ${boxed}$."
            f.write(json.dumps({"problem": p.question, "solution": solution}) + "\n")
    with (HERE / "code_world.jsonl").open("w") as f:
        for i, p in enumerate(code.sample_problems(40, seed=2029)):
            f.write(json.dumps({"task_id": i, "text": p.question, "code": p.answer,
                                "test_list": p.hidden_tests}) + "\n")


if __name__ == "__main__":
    main()
