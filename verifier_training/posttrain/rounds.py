"""What ``rsft``, ``dpo`` and ``distill`` share: sample a round, measure a policy, train with TRL.

- ``sample_round``: one engine on a policy (bon_server's ``VLLMGenerator``, as ``sample`` and
  the server use it) samples K per training problem and, when asked, 16 per held-out problem;
  the engine is shut down before training so the cores go to one job at a time.
- ``policy_metrics``: pass@1, pass@K and majority@K from held-out records (``passk``'s
  estimators, the task's checker).
- ``add_round_args``: the sampling, measuring and machine flags of a round.
- ``train_sft`` / ``train_dpo``: TRL's ``SFTTrainer`` / ``DPOTrainer`` on ``datasets``
  built from conversational prompt-completion rows (so the loss covers the assistant turn and
  its ``<|end|>`` only, rendered by the policy's own chat template), from the current policy.
  Each row's prompt is ``records.chat_messages``: the question after the task's system
  message (a dataset's ``--system-prompt``), exactly as ``sample_round`` asked it.
  The output is a servable model directory: the weights, the init's tokenizer and generation
  config (copied, so vLLM's request defaults cannot drift), ``training_config.json`` and
  ``train_rows.jsonl`` (the rows trained on).
- ``held_out_leaks``: training records whose question is one of the task's held-out ones.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see train/sft.py: sleeping OpenMP waiters

from bon_server.tasks import Task  # noqa: E402
from bon_server.tasks.base import EVAL_SEED, held_out_questions  # noqa: E402
from bon_server.types import SamplingParams  # noqa: E402
from verifier_training.data.records import (  # noqa: E402
    SampleRecord,
    chat_messages,
    group_by_problem,
)
from verifier_training.data.sampling import (  # noqa: E402
    close,
    open_generator,
    problem_stream,
    sample_problem_records,
)
from verifier_training.evaluate.passk import majority_correct, pass_at_k  # noqa: E402

COPIED_FROM_INIT = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")


def sample_round(policy: str, task: Task, *, train_problems: int, train_seed: int, k: int,
                 eval_problems: int = 0, eval_k: int = 16, temperature: float = 1.0,
                 max_tokens: int = 128, progress: bool = True, dtype: str = "auto",
                 ) -> tuple[list[SampleRecord], list[SampleRecord]]:
    """(training records, held-out records) of ``policy``; either count may be 0. The
    training problems come from stream ``train_seed``, which never holds a held-out problem
    (so it may not be ``EVAL_SEED``, the held-out stream itself)."""
    if train_problems and train_seed == EVAL_SEED:
        raise ValueError(f"training problems cannot come from stream {EVAL_SEED}: it is the "
                         "held-out one")
    params = SamplingParams(temperature=temperature, max_tokens=max_tokens)

    async def run() -> tuple[list[SampleRecord], list[SampleRecord]]:
        generator = open_generator(policy, seed=train_seed, dtype=dtype)
        try:
            held_out: list[SampleRecord] = []
            if eval_problems:
                held_out = await sample_problem_records(
                    generator, task.problems(eval_problems, EVAL_SEED), split="eval",
                    problem_seed=EVAL_SEED, policy=policy, k=eval_k, params=params,
                    progress=progress, desc="eval", task=task)
            train: list[SampleRecord] = []
            if train_problems:
                train = await sample_problem_records(
                    generator, problem_stream(task, train_problems, train_seed), split="train",
                    problem_seed=train_seed, policy=policy, k=k, params=params,
                    progress=progress, desc="sample", task=task)
            return train, held_out
        finally:
            await close(generator)

    found = asyncio.run(run())
    # collect the shut-down engine now: left to interpreter exit, its __del__ runs after
    # vLLM's module globals are gone and prints a TypeError traceback
    gc.collect()
    return found


def policy_metrics(records: Sequence[SampleRecord]) -> dict[str, float]:
    """pass@1, pass@K, majority@K (K = the samples per problem) of held-out records."""
    from bon_server.tasks import get_task

    groups = list(group_by_problem(records).values())
    if not groups:
        return {}
    k = min(len(g) for g in groups)
    p1 = pk = maj = 0.0
    for group in groups:
        group = group[:k]
        correct = sum(r.correct for r in group)
        p1 += pass_at_k(k, correct, 1)
        pk += pass_at_k(k, correct, k)
        task = get_task(group[0].task)
        maj += majority_correct(task, task.parse(group[0].question), [r.completion for r in group])
    n = len(groups)
    return {"problems": n, "pass@1": round(p1 / n, 4), f"pass@{k}": round(pk / n, 4),
            f"majority@{k}": round(maj / n, 4),
            "no_answer": round(sum(r.answer is None for r in records) / len(records), 4)}


def add_round_args(p: argparse.ArgumentParser, eval_help: str) -> None:
    """The flags of sampling and measuring a round (``sample_round``) and of training it."""
    p.add_argument("--eval-problems", type=int, default=500, help=eval_help)
    p.add_argument("--eval-k", type=int, default=16, help="samples per held-out problem")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--max-tokens", type=int, default=128, help="most tokens per sample")
    p.add_argument("--threads", type=int, default=2, help="torch threads for training")
    p.add_argument("--dtype", default="auto", help="engine dtype (auto: as the server)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def held_out_leaks(records: Sequence[SampleRecord], task: Task) -> list[str]:
    """The questions of ``records`` that are held out of ``task``'s training (its evaluation
    problems; a dataset's held-out part): what a training set must never hold."""
    held = held_out_questions(task)
    return sorted({r.question for r in records if r.question in held})


def chat_rows(examples: Sequence[tuple[str, str]],
              system_prompt: str = "") -> list[dict[str, Any]]:
    """(question, completion) -> TRL's conversational prompt-completion rows, the prompt as
    sampling asked it (``system_prompt``: the task's, ``records.task_system_prompt``)."""
    return [{"prompt": chat_messages(q, system_prompt),
             "completion": [{"role": "assistant", "content": c}]} for q, c in examples]


def pair_rows(pairs: Sequence[tuple[str, str, str]],
              system_prompt: str = "") -> list[dict[str, Any]]:
    """(question, chosen, rejected) -> TRL's conversational preference rows (the prompt as
    in ``chat_rows``)."""
    return [{"prompt": chat_messages(q, system_prompt),
             "chosen": [{"role": "assistant", "content": c}],
             "rejected": [{"role": "assistant", "content": r}]} for q, c, r in pairs]


def write_rows(path: str, rows: Sequence[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def _common_args(steps: int, batch_size: int, lr: float, seed: int, progress: bool,
                 output_dir: str) -> dict[str, Any]:
    return dict(
        output_dir=output_dir, max_steps=steps, per_device_train_batch_size=batch_size,
        learning_rate=lr, lr_scheduler_type="cosine", warmup_steps=min(10, steps // 10),
        weight_decay=0.0, max_grad_norm=1.0, logging_steps=max(1, steps // 10),
        save_strategy="no", report_to="none", seed=seed, data_seed=seed, use_cpu=True,
        dataloader_num_workers=0, disable_tqdm=not progress, max_length=512,
    )


def _load(init: str, threads: int):  # type: ignore[no-untyped-def]
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(init, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(init)


def _save(trainer, model, init: str, out: str, record: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    """Weights from training, tokenizer and generation config from the init, the record."""
    os.makedirs(out, exist_ok=True)
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    for name in COPIED_FROM_INIT:
        if os.path.exists(os.path.join(init, name)):
            shutil.copyfile(os.path.join(init, name), os.path.join(out, name))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    record = {**record, "init": init, "loss_log": losses}
    try:
        with open(os.path.join(init, "training_config.json")) as f:
            record["init_training_config"] = json.load(f)
    except OSError:
        record["init_training_config"] = None
    with open(os.path.join(out, "training_config.json"), "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    for name in os.listdir(out):  # safetensors writes 0600; a shipped model must be readable
        os.chmod(os.path.join(out, name), 0o644)


def _fit(make_trainer, model, init: str, out: str, record: dict[str, Any] | None,  # type: ignore[no-untyped-def]
         done: dict[str, Any], rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Train what ``make_trainer(scratch_dir)`` builds, then save the model to ``out`` with
    ``done`` (plus the training seconds) in its record and the ``rows`` it trained on in
    ``train_rows.jsonl``; TRL's own output dir is thrown away."""
    with tempfile.TemporaryDirectory(prefix="bon-train-") as scratch:
        trainer = make_trainer(scratch)
        start = time.time()
        trainer.train()
        done = {**done, "train_seconds": round(time.time() - start, 1)}
    os.makedirs(out, exist_ok=True)
    write_rows(os.path.join(out, "train_rows.jsonl"), rows)
    _save(trainer, model, init, out, {**(record or {}), "training": done})
    return done


def train_sft(init: str, examples: Sequence[tuple[str, str]], out: str, *, steps: int,
              batch_size: int = 32, lr: float = 5e-4, seed: int = 0, threads: int = 2,
              progress: bool = True, record: dict[str, Any] | None = None,
              system_prompt: str = "") -> dict[str, Any]:
    """Fine-tune ``init`` on (question, completion) pairs with TRL's SFTTrainer, each asked
    after ``system_prompt`` (the task's); save to ``out``. Returns what it did (steps,
    seconds, final loss)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    if not examples:
        raise ValueError("nothing to train on: the rule kept no example")
    model, tokenizer = _load(init, threads)
    rows = chat_rows(examples, system_prompt)

    def make(scratch: str) -> SFTTrainer:
        config = SFTConfig(**_common_args(steps, batch_size, lr, seed, progress, scratch),
                           completion_only_loss=True, packing=False)
        return SFTTrainer(model=model, args=config, processing_class=tokenizer,
                          train_dataset=Dataset.from_list(rows))

    return _fit(make, model, init, out, record,
                {"trainer": "trl.SFTTrainer", "examples": len(examples), "steps": steps,
                 "batch_size": batch_size, "lr": lr, "seed": seed,
                 "system_prompt": system_prompt}, rows)


def train_dpo(init: str, pairs: Sequence[tuple[str, str, str]], out: str, *, steps: int,
              batch_size: int = 32, lr: float = 5e-5, beta: float = 0.1, sft_weight: float = 0.0,
              seed: int = 0, threads: int = 2, progress: bool = True,
              record: dict[str, Any] | None = None, system_prompt: str = "") -> dict[str, Any]:
    """DPO from ``init`` (also the frozen reference) on (question, chosen, rejected) with TRL's
    DPOTrainer, each asked after ``system_prompt`` (the task's); save to ``out``.
    ``sft_weight`` > 0 adds the chosen completions' NLL to the loss, weighted so (RPO, Pang et
    al. 2024: DPO alone lowers the chosen answers' likelihood too on reasoning tasks)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    if not pairs:
        raise ValueError("nothing to train on: no preference pair was formed")
    model, tokenizer = _load(init, threads)
    losses = dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, sft_weight]) \
        if sft_weight > 0 else {}
    rows = pair_rows(pairs, system_prompt)

    def make(scratch: str) -> DPOTrainer:
        config = DPOConfig(**_common_args(steps, batch_size, lr, seed, progress, scratch),
                           beta=beta, **losses)
        return DPOTrainer(model=model, args=config, processing_class=tokenizer,
                          train_dataset=Dataset.from_list(rows))

    return _fit(make, model, init, out, record,
                {"trainer": "trl.DPOTrainer", "pairs": len(pairs), "steps": steps,
                 "batch_size": batch_size, "lr": lr, "beta": beta, "sft_weight": sft_weight,
                 "seed": seed, "system_prompt": system_prompt}, rows)
