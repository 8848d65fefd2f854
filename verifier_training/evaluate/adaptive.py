"""Replay adaptive sampling over recorded samples: what each setting of the stopping rule
would have cost in tokens and accuracy, against fixed best_of = cap, before serving it.

    python -m verifier_training adaptive --samples runs/x/samples.jsonl --cap 16

Each problem's samples (in ``sample_index`` order) are cut into blocks of ``cap``: every
block is one replayed request (64 samples a problem give 4). Fixed N selects by majority
over the whole block; adaptive draws the block in the server's own waves
(``bon_server.search.wave_sizes``) and stops where the server's own rule
(``bon_server.search.should_stop``) would, then selects by majority over what it drew. A
request is right when the candidate the selector returns is right (the record's
checker verdict). Tokens are the drawn candidates' ``completion_tokens``. The grid runs
over wave sizes, minimums and confidences; the table prints the fraction of fixed N's
tokens and the accuracy change, so a server's ``--adaptive-*`` defaults can be chosen
from the policy's own samples. Votes are on the records' answers (the world's rules when
``sample`` wrote them); ``--answer-rules`` re-extracts them by other rules.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import bon_server.tasks  # noqa: F401  (every world registers its answer rules: --answer-rules)
from bon_server.answers import check_rules, extract_answer
from bon_server.search import Adaptive, should_stop, wave_sizes
from bon_server.selectors import SELECTORS, SelectorInput
from bon_server.types import Candidate
from verifier_training.cli import command_parser
from verifier_training.data.records import SampleRecord, read_samples


@dataclass(frozen=True, slots=True)
class Replay:
    accuracy: float
    tokens: float  # mean completion tokens per request
    candidates: float  # mean candidates drawn per request
    requests: int


def blocks(samples: Sequence[SampleRecord], cap: int) -> list[list[SampleRecord]]:
    """Every problem's samples in index order, cut into whole blocks of ``cap``."""
    by_problem: dict[str, list[SampleRecord]] = defaultdict(list)
    for s in samples:
        by_problem[s.problem_id].append(s)
    out = []
    for rows in by_problem.values():
        rows.sort(key=lambda s: s.sample_index)
        out += [rows[i : i + cap] for i in range(0, len(rows) - cap + 1, cap)]
    return out


def majority_pick(block: Sequence[SampleRecord]) -> SampleRecord:
    stubs = [Candidate(s.completion, (), None, "stop") for s in block]
    order = SELECTORS["majority"].fn(SelectorInput(stubs, [s.answer for s in block])).order
    return block[order[0]]


def replay(requests: Sequence[Sequence[SampleRecord]], params: Adaptive | None) -> Replay:
    """Majority over each request's samples, drawn all at once (``params`` None) or in the
    server's waves until its stopping rule fires."""
    right = tokens = drawn_total = 0
    for block in requests:
        drawn = len(block)
        if params is not None:
            drawn = 0
            sizes = wave_sizes(len(block), params)
            for w, size in enumerate(sizes):
                drawn += size
                answers = [s.answer for s in block[:drawn]]
                if w < len(sizes) - 1 and should_stop("majority", answers, None, params):
                    break
        chosen = majority_pick(block[:drawn])
        right += chosen.correct
        tokens += sum(s.completion_tokens for s in block[:drawn])
        drawn_total += drawn
    n = len(requests)
    return Replay(right / n, tokens / n, drawn_total / n, n)


def replay_parser(command: str, doc: str | None, cap_help: str) -> argparse.ArgumentParser:
    """A replay's flags: the recorded samples, and the best_of of the requests replayed."""
    p = command_parser(command, doc, whole_doc=True)
    p.add_argument("--samples", required=True, help="SampleRecords JSONL (from `sample`)")
    p.add_argument("--cap", type=int, default=16, help=cap_help)
    return p


def main(argv: list[str] | None = None) -> int:
    p = replay_parser("adaptive", __doc__, cap_help="best_of: the most a request draws")
    p.add_argument("--waves", default="1,2,4", help="comma-separated wave sizes to try")
    p.add_argument("--mins", default="2,3,4", help="comma-separated minimums to try")
    p.add_argument("--confidences", default="0.8,0.9,0.95,0.99", help="comma-separated")
    p.add_argument("--answer-rules", default=None,
                   help="re-extract each completion's answer by these rules (comma-separated; "
                   "e.g. final_line to vote on Countdown's text instead of its value) instead "
                   "of the record's")
    args = p.parse_args(argv)

    samples = read_samples(args.samples)
    if args.answer_rules:
        rules = check_rules([r.strip() for r in args.answer_rules.split(",")])
        samples = [dataclasses.replace(s, answer=extract_answer(s.completion, rules))
                   for s in samples]
    requests = blocks(samples, args.cap)
    if not requests:
        raise SystemExit(f"no problem has {args.cap} samples")
    fixed = replay(requests, None)
    print(f"{len(requests)} requests of cap {args.cap}; fixed N: accuracy {fixed.accuracy:.3f}, "
          f"{fixed.tokens:.0f} tokens, {fixed.candidates:.1f} candidates a request")
    print(f"{'wave':>4} {'min':>3} {'conf':>5} {'cands':>6} {'tokens':>7} {'x fixed':>7} "
          f"{'acc':>6} {'d acc':>6}")
    ints = lambda text: [int(x) for x in text.split(",")]  # noqa: E731
    for wave, least, conf in itertools.product(
        ints(args.waves), ints(args.mins), [float(x) for x in args.confidences.split(",")]
    ):
        r = replay(requests, Adaptive(wave=wave, min_candidates=least, confidence=conf))
        print(f"{wave:>4} {least:>3} {conf:>5.2f} {r.candidates:>6.1f} {r.tokens:>7.0f} "
              f"{r.tokens / fixed.tokens:>7.2f} {r.accuracy:>6.3f} "
              f"{r.accuracy - fixed.accuracy:>+6.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
