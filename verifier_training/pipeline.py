"""The whole verifier chain from one command: sample -> label-steps -> train-orm -> train-prm
-> evaluate (-> export), into one output directory.

    python -m verifier_training pipeline --out runs/arith --ship

Stage 1 opens ONE vLLM engine for the policy and, with it, samples the training problems
(seed ``--train-seed``), samples the held-out problems (seed ``--eval-seed``, K = ``--eval-k``
candidates each, sampled once for every evaluation), and rolls out Monte-Carlo step labels
for a subset of training candidates and of held-out candidates (the latter only feed the
PRM's first-error F1). The engine is then shut down, so the training stages have the cores.
Each stage writes exactly the files its own command would write, and calls the same
functions (``train-orm``, ``train-prm``, ``evaluate`` and ``export`` run through their
``main``), so any stage can be rerun by hand on the files in ``--out``:

    train_samples.jsonl  eval_samples.jsonl  train_labels.jsonl  eval_labels.jsonl
    orm/  prm/  eval/{eval.json,eval.csv,eval.png,scores.jsonl}  export/  pipeline.json

On your own data: ``--dataset FILE`` (and the other task flags, ``--step-separator``
included) instead of a world; the training problems are the file's training part, the
held-out ones its held-out part, and each stage is run with the same task flags:

    python -m verifier_training pipeline --policy MODEL --dataset FILE --out DIR

``--resume`` reuses any of those files that already exist. ``--ship`` copies the trained
verifiers to ``bon_server/embedded/<task>-orm`` and ``<task>-prm`` (with ``eval.json`` as
``evaluation.json``); the task is the policy's world unless ``--task`` names one. A summary
table of stage wall times and results ends the run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shlex
import shutil
import time
from typing import Any

from bon_server.config import SERVING_FILE
from bon_server.tasks import Task
from bon_server.tasks.args import add_task_args, checker_summary, task_flags, task_from_args
from bon_server.tasks.base import EVAL_SEED
from bon_server.types import SamplingParams
from verifier_training.cli import command_parser
from verifier_training.data import labels, sampling
from verifier_training.data.records import read_samples, write_json, write_jsonl
from verifier_training.evaluate import curves
from verifier_training.posttrain import export
from verifier_training.train import orm, prm


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = command_parser("pipeline", __doc__)
    p.add_argument("--out", required=True, help="output directory for every stage's files")
    p.add_argument("--policy", default="bon_server/embedded/arith-policy",
                   help="policy model directory: sampled, rolled out, and the verifiers' init")
    add_task_args(p)
    # sizes
    p.add_argument("--train-problems", type=int, default=1500, help="training problems")
    p.add_argument("--train-k", type=int, default=16, help="candidates per training problem")
    p.add_argument("--train-seed", type=int, default=sampling.TRAIN_SEED,
                   help="training problem stream seed")
    p.add_argument("--eval-problems", type=int, default=500, help="held-out problems")
    p.add_argument("--eval-k", type=int, default=64, help="candidates per held-out problem")
    p.add_argument("--eval-seed", type=int, default=EVAL_SEED,
                   help="held-out problem stream seed (distinct from --train-seed)")
    p.add_argument("--rollouts", type=int, default=8, help="M: rollouts per step prefix")
    p.add_argument("--label-records", type=int, default=6000,
                   help="training candidates to label (seeded subset; 0: all)")
    p.add_argument("--eval-label-records", type=int, default=1000,
                   help="held-out candidates to label for the PRM's first-error F1 (0: none)")
    p.add_argument("--no-early-stop", action="store_true",
                   help="roll out every step (default: stop after the first step with k == 0)")
    # sampling
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--max-tokens", type=int, default=128, help="most tokens per candidate")
    sampling.add_engine_args(p, concurrency=32, max_model_len=False)
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the engine, label subsets, rollouts, training and evaluation")
    # training and evaluation
    p.add_argument("--orm-args", default="",
                   help="extra flags for train-orm, one quoted string (e.g. \"--epochs 2\")")
    p.add_argument("--prm-args", default="",
                   help="extra flags for train-prm, one quoted string (e.g. \"--soft-labels\")")
    p.add_argument("--eval-args", default="", help="extra flags for evaluate, one quoted string")
    p.add_argument("--subsets", type=int, default=32, help="evaluation subsets per problem and N")
    p.add_argument("--resume", action="store_true", help="reuse stage outputs that already exist")
    p.add_argument("--ship", action="store_true",
                   help="copy the trained verifiers to bon_server/embedded/<task>-{orm,prm}")
    p.add_argument("--no-progress", action="store_true", help="disable progress bars")
    return p.parse_args(argv)


async def stage_rollouts(args: argparse.Namespace, task: Task, paths: dict[str, str],
                         seconds: dict[str, float], info: dict[str, Any]) -> None:
    """Sampling and labelling with one engine; skips what --resume finds on disk."""
    def have(name: str) -> bool:
        return args.resume and os.path.exists(paths[name])

    if all(have(n) for n in ("train_samples", "eval_samples", "train_labels", "eval_labels")):
        return
    t0 = time.time()
    generator = sampling.open_generator(args.policy, seed=args.seed,
                                        **sampling.engine_options(args))
    seconds["engine_start"] = time.time() - t0
    params = SamplingParams(temperature=args.temperature, top_p=1.0, max_tokens=args.max_tokens)
    common = dict(policy=args.policy, params=params, concurrency=args.concurrency,
                  progress=not args.no_progress)
    try:
        for split, n, k, seed in (("train", args.train_problems, args.train_k, args.train_seed),
                                  ("eval", args.eval_problems, args.eval_k, args.eval_seed)):
            name = f"{split}_samples"
            if have(name):
                continue
            t0 = time.time()
            records = await sampling.sample_problem_records(
                generator, sampling.problem_stream(task, n, seed), split=split,
                problem_seed=seed, k=k, desc=f"sample-{split}", task=task, **common)
            write_jsonl(paths[name], records)
            seconds[f"sample_{split}"] = time.time() - t0
            info[name] = sampling.summarize(records)
        label_args = labels.parse_args(
            ["--records", "-", "--out", "-", "--rollouts", str(args.rollouts), "--seed",
             str(args.seed), "--temperature", str(args.temperature), "--max-tokens",
             str(args.max_tokens)] + (["--no-early-stop"] if args.no_early_stop else [])
            + (["--no-progress"] if args.no_progress else []) + task_flags(args))
        for split, n in (("train", args.label_records), ("eval", args.eval_label_records)):
            name = f"{split}_labels"
            if have(name):
                continue
            t0 = time.time()
            pool = read_samples(paths[f"{split}_samples"])
            subset = labels.choose_subset(pool, n or None, args.seed) if n or split == "train" \
                else []
            labelled, counters = await labels.run_labelling(
                generator, subset, label_args, args.policy, desc=f"label-{split}")
            write_jsonl(paths[name], labelled)
            seconds[f"label_{split}"] = time.time() - t0
            info[name] = {**labels.summarize(labelled), **counters}
    finally:
        await sampling.close(generator)


def ship(src: str, name: str, eval_json: str) -> str:
    from bon_server.config import EMBEDDED_DIR

    dst = EMBEDDED_DIR / name
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    if os.path.exists(eval_json):
        shutil.copy(eval_json, dst / "evaluation.json")
    return str(dst)


# evaluate's method -> how the server serves it: (verifier kind, selector, PRM aggregation)
SERVED_AS: dict[str, tuple[str | None, str, str | None]] = {
    "majority": (None, "majority", None),
    "orm": ("orm", "verifier", None),
    "weighted_majority_orm": ("orm", "weighted_majority", None),
    **{f"prm_{how}": ("prm", "verifier", how) for how in ("min", "prod", "last", "mean")},
}


def serving_defaults(ev: dict[str, Any], world: str, n: str = "16") -> dict[str, Any]:
    """The ``serving.json`` for a world: the method that evaluated best at N (ties: the first
    of majority, the ORM's, the PRM's), as the verifier, its kind, selector and aggregation."""
    wm_prm = ("prm", "weighted_majority", ev["prm_aggregation_for_weighted_majority"])
    served = dict(SERVED_AS, weighted_majority_prm=wm_prm)
    accuracy = {m: ev["curve"][m][n]["accuracy"] for m in served if m in ev["curve"]}
    best = max(accuracy, key=lambda m: (accuracy[m], -list(served).index(m)))
    kind, selector, aggregation = served[best]
    out: dict[str, Any] = {"method": best, "accuracy_at_16": accuracy[best],
                           "majority_at_16": accuracy.get("majority"),
                           "verifier": f"{world}-{kind}" if kind else None,
                           "verifier_kind": kind, "default_selector": selector}
    if aggregation:
        out["prm_aggregation"] = aggregation
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(args.kv_cache_gib))
    if args.train_seed == args.eval_seed:
        raise SystemExit("--train-seed and --eval-seed must differ (held-out problems)")
    if args.dataset and args.ship:
        raise SystemExit("--ship copies a world's verifiers into bon_server/embedded; a "
                         "dataset's stay in --out (serve them with --verifier)")
    task = task_from_args(args, args.policy)  # a bad dataset stops here, before any engine
    if getattr(task, "finite", False):
        print(task.describe())  # type: ignore[attr-defined]
        if args.eval_seed != EVAL_SEED:
            raise SystemExit("a dataset's held-out part is its own: leave --eval-seed alone")
    out = args.out
    os.makedirs(out, exist_ok=True)
    paths = {n: os.path.join(out, f"{n}.jsonl")
             for n in ("train_samples", "eval_samples", "train_labels", "eval_labels")}
    paths |= {"orm": os.path.join(out, "orm"), "prm": os.path.join(out, "prm"),
              "eval": os.path.join(out, "eval"), "export": os.path.join(out, "export")}
    seconds: dict[str, float] = {}
    info: dict[str, Any] = {}
    quiet = ["--no-progress"] if args.no_progress else []
    start = time.time()

    # --- 1. sample and label with one engine ----------------------------------------------------
    asyncio.run(stage_rollouts(args, task, paths, seconds, info))
    gc.collect()  # drop the shut-down engine now, not in interpreter teardown

    # --- 2. train the ORM ---------------------------------------------------------------------
    done = lambda name: args.resume and os.path.exists(  # noqa: E731
        os.path.join(paths[name], "training_config.json"))
    if not done("orm"):
        t0 = time.time()
        orm.main(["--records", paths["train_samples"], "--out", paths["orm"], "--init",
                        args.policy, "--seed", str(args.seed), *quiet,
                        *shlex.split(args.orm_args)])
        seconds["train_orm"] = time.time() - t0

    # --- 3. train the PRM ---------------------------------------------------------------------
    if not done("prm"):
        t0 = time.time()
        prm.main(["--labels", paths["train_labels"], "--out", paths["prm"], "--init",
                        args.policy, "--seed", str(args.seed), *quiet,
                        *shlex.split(args.prm_args)])
        seconds["train_prm"] = time.time() - t0

    # --- 4. evaluate on the held-out problems ---------------------------------------------------
    t0 = time.time()
    eval_labels = ["--labels", paths["eval_labels"]] if os.path.exists(paths["eval_labels"]) \
        and args.eval_label_records else []
    curves.main(["--records", paths["eval_samples"], "--orm", paths["orm"], "--prm",
                   paths["prm"], *eval_labels, "--out-dir", paths["eval"], "--subsets",
                   str(args.subsets), "--seed", str(args.seed), *quiet, *task_flags(args),
                   *shlex.split(args.eval_args)])
    seconds["evaluate"] = time.time() - t0

    # --- 5. export the derived data sets (cheap) ------------------------------------------------
    t0 = time.time()
    export.main(["--records", paths["train_samples"], "--labels", paths["train_labels"],
                 "--out-dir", paths["export"], "--seed", str(args.seed), *task_flags(args)])
    seconds["export"] = time.time() - t0

    shipped = {}
    eval_json = os.path.join(paths["eval"], "eval.json")
    if args.ship:
        world = task.name
        shipped = {"orm": ship(paths["orm"], f"{world}-orm", eval_json),
                   "prm": ship(paths["prm"], f"{world}-prm", eval_json)}
        with open(eval_json) as f:
            serving = serving_defaults(json.load(f), world)
        if os.path.isdir(args.policy):
            write_json(os.path.join(args.policy, SERVING_FILE), serving)
            shipped["serving"] = serving
    seconds["total"] = time.time() - start

    # --- summary ------------------------------------------------------------------------------
    with open(eval_json) as f:
        ev = json.load(f)
    trained = {}
    for name in ("orm", "prm"):
        with open(os.path.join(paths[name], "training_config.json")) as f:
            trained[name] = json.load(f)["result"]
    write_json(os.path.join(out, "pipeline.json"), {
        "flags": vars(args), "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "data": info, "training": trained, "shipped": shipped,
        "eval": {k: ev[k] for k in ("gap_closed_at_16", "best_prm_aggregation_at_16",
                                    "pairwise_accuracy", "processbench")},
    })
    print("\n=== pipeline summary ===")
    if "serving" in shipped:
        print(f"  serving defaults ({SERVING_FILE}): {shipped['serving']}")
    for stage, s in seconds.items():
        print(f"  {stage:16s} {s:8.1f} s")
    ns = [n for n in ("1", "4", "16", "64") if n in ev["curve"]["oracle"]]
    print(f"\n  {'method':24s}" + "".join(f"{'N=' + n:>8s}" for n in ns))
    for method, by_n in ev["curve"].items():
        print(f"  {method:24s}" + "".join(f"{by_n[n]['accuracy']:8.3f}" for n in ns))
    print(f"\n  gap closed at N=16: {ev['gap_closed_at_16']}")
    print(f"  best PRM aggregation at N=16: {ev['best_prm_aggregation_at_16']}")
    print(f"  pairwise accuracy: {ev['pairwise_accuracy']}")
    if ev.get("processbench"):
        pb = ev["processbench"]
        print(f"  PRM first-error F1 {pb['f1']:.3f} (error acc {pb['error_accuracy']:.3f}, "
              f"correct acc {pb['correct_accuracy']:.3f}, {pb['solutions']} solutions)")
    for split in ("train", "eval"):
        if f"{split}_samples" in info:
            d = info[f"{split}_samples"]
            print(f"  {split} samples: {d['problems']} problems x k, pass@1 {d['pass@1']}, "
                  f"problems with a correct sample {d['problems_with_a_correct_sample']}")
    if checker_summary(task):
        print(f"  {checker_summary(task)}")
    print(f"  outputs: {out}  (plot {os.path.join(paths['eval'], 'eval.png')})")
    if shipped:
        print(f"  shipped: {shipped['orm']}, {shipped['prm']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
