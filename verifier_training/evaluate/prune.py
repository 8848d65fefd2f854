"""Replay pruning over recorded samples: what each schedule would have cost in tokens and
accuracy against fixed best_of = cap, and whether a scorer's partial scores carry signal,
before serving it.

    python -m verifier_training prune --samples runs/paths/v/eval_samples.jsonl --cap 16
    python -m verifier_training prune --samples ... --orm bon_server/embedded/paths-orm

Each problem's samples (in ``sample_index`` order) are cut into blocks of ``cap``, one
replayed request each (``adaptive.blocks``). A pruning round at ``every * r`` steps
judges every candidate that is still writing by its finished lines, ranks them as the
server does (``bon_server.search.prune.prune_order``) and keeps the best ``keep`` share; a
pruned candidate costs the tokens of the lines it was judged on (at least what the server
spends: there a candidate keeps decoding until the slowest has reached the boundary), a
survivor its whole completion. The survivors are then selected two ways: by a perfect
outcome verifier (right when any survivor is right: what a checker-backed verifier such as
``paths-orm`` picks) and by majority over their answers.

Scorers of the partial candidates:

    none    every prefix scores the same (a verifier that reads only the answer line, as
            paths-orm does: the server's ranking is then by start order, i.e. at random)
    exact   the world's exact step checker over the finished steps (1 if all pass): a
            perfect PRM, the ceiling of what a verifier's prefix scores can carry
    --orm   an ORM's probability of each prefix text (the server's partial scoring)
    --prm   a PRM's steps, aggregated by ``--prm-aggregation``

Beside the table it prints each scorer's pairwise accuracy on the prefixes by step: of a
problem's candidates still writing at that step, how often a would-be-right one outscores a
would-be-wrong one (ties half): 0.5 is no signal.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bon_server.search.prune import prune_order
from bon_server.tasks import get_task
from verifier_training.data.records import SampleRecord, read_samples
from verifier_training.evaluate.adaptive import blocks, majority_pick, replay_parser
from verifier_training.evaluate.curves import add_verifier_args, score_orm, score_prm

Scorer = Callable[[SampleRecord, str], float]  # (candidate, its judged prefix) -> score
SIGNAL_STEPS = 3  # the prefix signal is printed for steps 1..3


@dataclass(frozen=True, slots=True)
class Replay:
    oracle: float  # accuracy with a perfect outcome verifier over the survivors
    majority: float  # accuracy of majority over the survivors' answers
    tokens: float  # completion tokens per request, pruned candidates' partial ones included
    pruned: float  # candidates pruned per request
    requests: int


def prefix_at(completion: str, steps: int) -> str | None:
    """The first ``steps`` finished lines of ``completion`` while it is still writing past
    them; None when it ended before (it is no longer racing at that boundary)."""
    count = end = 0
    for line in completion.split("\n")[:-1]:  # the finished lines
        end += len(line) + 1
        count += line.strip() != ""
        if count == steps:
            return completion[:end] if end < len(completion) else None
    return None


def replay(requests: Sequence[Sequence[SampleRecord]], score: Scorer,
           count_tokens: Callable[[str], int], *, every: int = 1, keep: float = 0.5,
           rounds: int = 1, distinct: bool = False) -> Replay:
    """Prune each request on the schedule, as ``bon_server.search.draw_pruned`` would."""
    oracle = majority = tokens = pruned_total = 0
    for block in requests:
        live = list(range(len(block)))
        spent: dict[int, int] = {}  # pruned candidate -> tokens it had made
        for r in range(1, rounds + 1):
            judged = {i: prefix_at(block[i].completion, every * r) for i in live}
            racing = [i for i in live if judged[i] is not None]
            done = len(live) - len(racing)
            kept = max(math.ceil(keep * len(racing)), 1 - done, 0)  # n = 1
            if kept >= len(racing):
                continue
            scores = [score(block[i], judged[i]) for i in racing]  # type: ignore[arg-type]
            order = prune_order(scores, racing, [judged[i] for i in racing] if distinct else None)
            for j in order[kept:]:
                i = racing[j]
                live.remove(i)
                spent[i] = min(count_tokens(judged[i]), block[i].completion_tokens)  # type: ignore[arg-type]
        survivors = [block[i] for i in live]
        oracle += any(s.correct for s in survivors)
        majority += majority_pick(survivors).correct
        tokens += sum(s.completion_tokens for s in survivors) + sum(spent.values())
        pruned_total += len(spent)
    n = len(requests)
    return Replay(oracle / n, majority / n, tokens / n, pruned_total / n, n)


def no_signal(record: SampleRecord, prefix: str) -> float:
    """Every prefix alike: what a verifier that reads only the answer line gives."""
    return 0.0


def exact_scorer() -> Scorer:
    """1 when the world's exact step checker accepts every finished step (None: not a step
    it can judge, passes), else 0."""
    from bon_server.tasks.base import completion_steps

    problems: dict[str, object] = {}

    def score(record: SampleRecord, prefix: str) -> float:
        task = get_task(record.task)
        if record.question not in problems:
            problems[record.question] = task.parse(record.question)
        steps = completion_steps(prefix)
        return float(all(task.check_step(problems[record.question], steps, i) is not False
                         for i in range(len(steps))))

    return score


def verifier_scorer(requests: Sequence[Sequence[SampleRecord]], *, orm: str | None,
                    prm: str | None, aggregation: str, steps: int,
                    batch_size: int = 64, progress: bool = True) -> Scorer:
    """Every prefix of up to ``steps`` steps, scored once by the ORM or PRM, then looked up."""
    import dataclasses

    from bon_server.scorers.base import aggregate
    from bon_server.tasks.base import completion_steps

    wanted = {(s.question, p) for block in requests for s in block
              for k in range(1, steps + 1) if (p := prefix_at(s.completion, k))}
    stubs = [dataclasses.replace(requests[0][0], question=q, completion=p) for q, p in wanted]
    if orm:
        table = score_orm(orm, stubs, batch_size, progress=progress)
        return lambda record, prefix: table[(record.question, prefix)]
    step_table = score_prm(prm, [(s.question, completion_steps(s.completion)) for s in stubs],  # type: ignore[arg-type]
                           batch_size, progress=progress)

    def score(record: SampleRecord, prefix: str) -> float:
        got = step_table[(record.question, tuple(completion_steps(prefix)))]
        return aggregate(got, aggregation) if got else 0.0

    return score


def prefix_signal(requests: Sequence[Sequence[SampleRecord]], score: Scorer,
                  steps: int) -> tuple[float, int]:
    """Pairwise accuracy of ``score`` on the candidates still writing at ``steps``: within a
    request, a would-be-right one above a would-be-wrong one (ties half); and the pairs."""
    wins = pairs = 0.0
    for block in requests:
        judged = [(s, p) for s in block if (p := prefix_at(s.completion, steps))]
        right = [score(s, p) for s, p in judged if s.correct]
        wrong = [score(s, p) for s, p in judged if not s.correct]
        for a, b in itertools.product(right, wrong):
            wins += 1.0 if a > b else 0.5 if a == b else 0.0
            pairs += 1
    return (wins / pairs if pairs else float("nan")), int(pairs)


def main(argv: list[str] | None = None) -> int:
    p = replay_parser("prune", __doc__, cap_help="best_of: the candidates each starts")
    p.add_argument("--every", default="1,2", help="comma-separated steps between rounds")
    p.add_argument("--keeps", default="0.25,0.375,0.5", help="comma-separated shares kept")
    p.add_argument("--rounds", type=int, default=1, help="pruning rounds")
    p.add_argument("--scorers", default="none,exact",
                   help="comma-separated from none, exact (and the --orm/--prm verifier)")
    add_verifier_args(p, "also scores the prefixes")
    p.add_argument("--distinct", action="store_true",
                   help="also replay ranking each judged prefix's best holder ahead of its "
                        "repeats (a repeated prefix has the same score and adds no new start)")
    p.add_argument("--max-problems", type=int, default=None, help="replay only the first N")
    p.add_argument("--no-progress", action="store_true", help="no progress bar while scoring")
    args = p.parse_args(argv)
    if args.orm and args.prm:
        p.error("give one verifier: --orm or --prm")

    samples = read_samples(args.samples)
    requests = blocks(samples, args.cap)
    if args.max_problems:
        keep_ids = set(list(dict.fromkeys(b[0].problem_id for b in requests))[: args.max_problems])
        requests = [b for b in requests if b[0].problem_id in keep_ids]
    if not requests:
        raise SystemExit(f"no problem has {args.cap} samples")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(samples[0].policy)

    @functools.cache
    def count_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    everies = [int(x) for x in args.every.split(",")]
    scorers: dict[str, Scorer] = {}
    for name in [s.strip() for s in args.scorers.split(",") if s.strip()]:
        if name not in ("none", "exact"):
            p.error(f"--scorers takes none and exact; got {name}")
        scorers[name] = no_signal if name == "none" else exact_scorer()
    if args.orm or args.prm:
        scorers["orm" if args.orm else f"prm-{args.prm_aggregation}"] = verifier_scorer(
            requests, orm=args.orm, prm=args.prm, aggregation=args.prm_aggregation,
            steps=max(SIGNAL_STEPS, args.rounds * max(everies)), progress=not args.no_progress)

    fixed = replay(requests, no_signal, count_tokens, keep=1.0)
    print(f"{len(requests)} requests of best_of {args.cap}; fixed N: perfect verifier "
          f"{fixed.oracle:.3f}, majority {fixed.majority:.3f}, {fixed.tokens:.0f} tokens")
    print("prefix signal (pairwise accuracy of the prefix scores, would-be-right above "
          "would-be-wrong; 0.5 is none):")
    for name, score in scorers.items():
        cells = [prefix_signal(requests, score, s) for s in range(1, SIGNAL_STEPS + 1)]
        print(f"  {name:>10}: " + "  ".join(f"step {s} {a:.3f} ({n} pairs)"
                                            for s, (a, n) in enumerate(cells, 1)))
    print(f"{'scorer':>10} {'distinct':>8} {'every':>5} {'keep':>5} {'pruned':>6} "
          f"{'tokens':>7} {'x fixed':>7} {'verifier':>8} {'d':>6} {'majority':>8} {'d':>6}")
    for (name, score), every, keep, distinct in itertools.product(
        scorers.items(), everies, [float(x) for x in args.keeps.split(",")],
        (False, True) if args.distinct else (False,),
    ):
        r = replay(requests, score, count_tokens, every=every, keep=keep, rounds=args.rounds,
                   distinct=distinct)
        print(f"{name:>10} {'yes' if distinct else 'no':>8} {every:>5} {keep:>5.3f} "
              f"{r.pruned:>6.1f} {r.tokens:>7.0f} {r.tokens / fixed.tokens:>7.2f} "
              f"{r.oracle:>8.3f} {r.oracle - fixed.oracle:>+6.3f} {r.majority:>8.3f} "
              f"{r.majority - fixed.majority:>+6.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
