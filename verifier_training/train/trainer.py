"""The rails every training command runs on: ``transformers.Trainer`` with our optimiser, our
schedule and our batches.

``sft``, ``train-orm``, ``train-prm`` and ``probe-steps`` each subclass ``RailsTrainer`` with a
short ``compute_loss`` and hand it a ``Batches`` dataset (batch i of the run, drawn in order) and
a collator. The library then brings gradient accumulation, checkpoints and ``--resume``, bf16,
``accelerate launch`` (multi-GPU, DeepSpeed) and the device; ``--lora`` wraps the model in
``peft``. The numerics are the project's, unchanged from the hand-written loop they replaced
(same weights bit for bit at accumulation 1, same seeds):

- AdamW over every trainable parameter in one group (betas 0.9 and ``--beta2``, weight decay on
  all of them), built by ``create_optimizer``;
- ``lr_factor``: linear warmup, then cosine decay to ``--min-lr-ratio``, a ``LambdaLR``;
- clipping by ``max_grad_norm`` (``--grad-clip``; 0: none), the loss divided by the
  accumulation count only (``loss_is_scaled_for_ga = False``).

``Progress`` keeps the smoothed loss (an exponential average of each step's loss, on the main
process; a checkpoint keeps it for a resumed run), prints ``step N  loss X  lr Y`` lines, stops
at a time budget and writes the summary line.

    python -m verifier_training train-orm --records R --out DIR --save-steps 200
    python -m verifier_training train-orm --records R --out DIR --save-steps 200 --resume last
    accelerate launch --multi_gpu --num_processes 8 -m verifier_training train-prm \
        --labels L --base MODEL --bf16 --lora --grad-accum 4 --out DIR

Checkpoints go to ``OUT/checkpoints`` (Trainer's ``output_dir``), the final model to ``OUT``
(on the main process). A resumed run with the same flags ends on the weights of an
uninterrupted one, bit for bit. With ``--lora`` the adapters are merged into the saved model
(a plain model of the base's class, which the server and vLLM load as any other); checkpoints
hold the adapters. FSDP and ZeRO-3 are refused: the validation and the final save read the
whole model.

This module knows nothing about models' heads or what a loss means.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

CHECKPOINTS = "checkpoints"  # Trainer's output_dir, under --out
PROGRESS = "progress.json"  # in a checkpoint: the smoothed loss, for a resumed run
HEADS = ["score", "classifier"]  # classification heads' module names (Llama's, BERT's)


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to ``min_ratio`` at ``total`` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# ----------------------------------------------------------------------------------- flags

def add_optimizer_args(p: argparse.ArgumentParser, lr: float) -> None:
    """The optimiser's flags but the warmup (a count in sft, a fraction elsewhere)."""
    p.add_argument("--lr", type=float, default=lr, help="peak learning rate")
    p.add_argument("--min-lr-ratio", type=float, default=0.1,
                   help="final lr as a fraction of the peak lr (cosine decay)")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    p.add_argument("--beta2", type=float, default=0.95, help="AdamW beta2")
    p.add_argument("--grad-clip", type=float, default=1.0,
                   help="clip the gradient norm to this (0: no clipping)")


def add_library_args(p: argparse.ArgumentParser) -> None:
    """What Trainer and peft bring: accumulation, checkpoints, bf16, LoRA."""
    p.add_argument("--grad-accum", type=int, default=1,
                   help="gradient accumulation: batches per optimizer step (the effective batch "
                        "is --batch-size x this x processes; each batch's mean loss counts "
                        "equally)")
    p.add_argument("--save-steps", type=int, default=0,
                   help="write a resumable checkpoint every N optimizer steps to OUT/checkpoints "
                        "(0: none; the final model goes to --out either way)")
    p.add_argument("--save-total-limit", type=int, default=2,
                   help="keep at most this many checkpoints")
    p.add_argument("--resume", default=None,
                   help="resume from a checkpoint directory, or 'last' (the newest in "
                        "OUT/checkpoints); run with the same flags")
    p.add_argument("--bf16", action="store_true",
                   help="bf16 autocast (weights stay float32; the model is saved in float32)")
    p.add_argument("--lora", action="store_true",
                   help="train LoRA adapters (peft) on every linear layer instead of all weights "
                        "(a new head and an added token are trained in full); the adapters are "
                        "merged into the saved model, which loads like any other")
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank")
    p.add_argument("--lora-alpha", type=float, default=32.0, help="LoRA alpha (scale alpha / r)")
    p.add_argument("--lora-dropout", type=float, default=0.0, help="LoRA dropout")


# ---------------------------------------------------------------------------------- config

@dataclass
class RailsArguments(TrainingArguments):
    """TrainingArguments plus the schedule's floor and the run's time budget and logging."""

    min_lr_ratio: float = 0.1
    time_budget_s: float = 0.0
    log_every: int = 100
    smoothing: float = 0.05
    show_lines: bool = True


def rails_arguments(args: argparse.Namespace, out: str, steps: int, warmup: int, *,
                    grad_clip: float | None = None, min_lr_ratio: float | None = None,
                    time_budget_s: float = 0.0, log_every: int = 100, smoothing: float = 0.05,
                    show_lines: bool | None = None) -> RailsArguments:
    """The Trainer's arguments of a command's flags (``add_optimizer_args``,
    ``add_library_args``; those a command lacks take their defaults)."""
    get = lambda name, default: getattr(args, name, default)  # noqa: E731
    save = get("save_steps", 0)
    progress = not get("no_progress", False)
    return RailsArguments(
        output_dir=os.path.join(out, CHECKPOINTS),
        report_to="none",
        seed=args.seed,
        max_steps=steps,
        per_device_train_batch_size=get("batch_size", 1),
        gradient_accumulation_steps=get("grad_accum", 1),
        learning_rate=args.lr,
        weight_decay=get("weight_decay", 0.0),
        adam_beta1=0.9,
        adam_beta2=get("beta2", 0.999),
        max_grad_norm=get("grad_clip", 1.0) if grad_clip is None else grad_clip,
        warmup_steps=warmup,
        min_lr_ratio=get("min_lr_ratio", 0.1) if min_lr_ratio is None else min_lr_ratio,
        bf16=get("bf16", False),
        # no CUDA: the CPU, named (Trainer wants it named for bf16 autocast and to run
        # several CPU processes under a launcher); with CUDA the library places the model
        use_cpu=not torch.cuda.is_available(),
        save_strategy="steps" if save > 0 else "no",
        save_steps=save if save > 0 else 500,
        save_total_limit=get("save_total_limit", None),
        # with the progress bar, Trainer's own loss lines (a mean over the last log_every
        # steps) go to the bar; without it, Progress prints the smoothed loss
        logging_strategy="steps" if progress and log_every else "no",
        logging_steps=log_every or 100,
        disable_tqdm=not progress,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        ddp_find_unused_parameters=False,
        time_budget_s=time_budget_s,
        log_every=log_every,
        smoothing=smoothing,
        show_lines=(not progress) if show_lines is None else show_lines,
    )


# ------------------------------------------------------------------------------------ data

class Batches(torch.utils.data.Dataset):
    """``count`` batches, batch i being the i-th call of ``draw`` (a list of examples).

    Drawn lazily and in order, so a stream of fresh problems is never held whole; asking for
    batch i draws (and drops) the ones before it, which keeps a resumed run's batches, and
    every process's, the ones an uninterrupted single run sees."""

    def __init__(self, draw: Callable[[], list[Any]], count: int) -> None:
        self._draw, self._count = draw, count
        self._next, self._made = 0, {}

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, i: int) -> list[Any]:
        if i < self._next and i not in self._made:
            raise IndexError(f"batch {i} was already drawn: Batches are read once, in order")
        while self._next <= i:
            self._made[self._next] = self._draw()
            self._next += 1
        for old in [k for k in self._made if k < i]:
            del self._made[old]
        return self._made.pop(i)


# ----------------------------------------------------------------------------- the trainer

class RailsTrainer(Trainer):
    """Trainer with the project's AdamW and schedule, batches read in order, and the loss
    divided by the accumulation count only. Subclasses write ``compute_loss``."""

    loss_is_scaled_for_ga = False

    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            a = self.args
            self.optimizer = torch.optim.AdamW(
                [p for p in opt_model.parameters() if p.requires_grad], lr=a.learning_rate,
                betas=(a.adam_beta1, a.adam_beta2), weight_decay=a.weight_decay)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int,
                         optimizer: torch.optim.Optimizer | None = None) -> Any:
        if self.lr_scheduler is None:
            warmup, floor = int(self.args.warmup_steps), self.args.min_lr_ratio
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer or self.optimizer,
                lambda s: lr_factor(s, num_training_steps, warmup, floor))
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def get_train_dataloader(self) -> torch.utils.data.DataLoader:
        collate = self.data_collator
        # its own generator: an iterator over a loader without one draws its base seed from
        # torch's global generator, which training's dropout masks read
        loader = torch.utils.data.DataLoader(self.train_dataset, batch_size=1, shuffle=False,
                                             collate_fn=lambda items: collate(items[0]),
                                             generator=torch.Generator())
        return self.accelerator.prepare(loader)

    def training_step(self, model: Any, inputs: dict[str, Any],
                      num_items_in_batch: Any = None) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.step_loss = loss if getattr(self, "step_loss", None) is None else self.step_loss + loss
        return loss


def build(trainer_cls: Callable[..., RailsTrainer], **kwargs: Any) -> RailsTrainer:
    """``trainer_cls(**kwargs)`` without its reseeding: Trainer seeds torch's generator with
    ``args.seed`` when built, which would replay the draws that built the model (a new head,
    resized embeddings) as the dropout masks of training (the token-classification head has
    dropout). The generator goes on from where the model's construction left it."""
    state = torch.random.get_rng_state()
    trainer = trainer_cls(**kwargs)
    torch.random.set_rng_state(state)
    return trainer


class Progress(TrainerCallback):
    """The smoothed loss, ``step N  loss X  lr Y`` lines, the time budget, the summary."""

    def __init__(self, trainer: RailsTrainer) -> None:
        self.trainer, self.args = trainer, trainer.args
        self.smooth: float | None = None
        self.done = 0
        self.start = time.time()
        self.seconds = 0.0
        self.lr = 0.0
        self.resumed_from: str | None = None
        trainer.add_callback(self)

    @property
    def elapsed(self) -> float:
        return time.time() - self.start

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.start = time.time()
        self.done = state.global_step
        saved = os.path.join(self.resumed_from or "", PROGRESS)
        if self.resumed_from and os.path.exists(saved):  # the smoothed loss goes on
            with open(saved) as f:
                self.smooth = json.load(f)["smoothed_loss"]

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.trainer.is_world_process_zero():
            path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}", PROGRESS)
            with open(path, "w") as f:
                json.dump({"smoothed_loss": self.smooth}, f)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        loss, self.trainer.step_loss = self.trainer.step_loss, None
        self.done = state.global_step
        self.lr = self.trainer.lr_scheduler.get_last_lr()[0]
        if loss is not None:
            value, w = loss.item(), self.args.smoothing  # w: the newest loss's weight
            self.smooth = value if self.smooth is None else (1 - w) * self.smooth + w * value
        step, every = state.global_step - 1, self.args.log_every
        if (self.args.show_lines and every and self.smooth is not None
                and (step % every == 0 or state.global_step == state.max_steps)
                and self.trainer.is_world_process_zero()):
            print(f"step {step:5d}  loss {self.smooth:.4f}  lr {self.lr:.2e}", flush=True)
        if self.args.time_budget_s and self.elapsed >= self.args.time_budget_s:
            control.should_training_stop = True

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.seconds = self.elapsed

    def summary(self, planned: int | None) -> str:
        """``trained D/N steps in S s[ (time budget: ...)]; final smoothed loss L``."""
        planned = self.done if planned is None else planned
        stopped = "" if self.done == planned else f" (time budget: stopped after {self.done})"
        loss = "none" if self.smooth is None else f"{self.smooth:.4f}"
        return (f"trained {self.done}/{planned} steps in {self.seconds:.0f} s{stopped}; "
                f"final smoothed loss {loss}")


# ----------------------------------------------------------------------------- run, LoRA

def set_threads(threads: int) -> None:
    """``--threads`` on a plain CPU run only: under ``accelerate launch`` or on a GPU the
    launcher and the library decide."""
    if not torch.cuda.is_available() and "LOCAL_RANK" not in os.environ:
        torch.set_num_threads(threads)


def with_lora(model: Any, args: argparse.Namespace, task_type: str,
              trainable_tokens: list[int] | None = None) -> Any:
    """``model`` wrapped in LoRA adapters on every linear layer if ``--lora`` (a new
    classification head is trained in full: peft's ``modules_to_save`` for the task type; so
    are the embedding rows of ``trainable_tokens``), else ``model``."""
    if not getattr(args, "lora", False):
        return model
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(task_type=task_type, r=args.lora_r, lora_alpha=args.lora_alpha,
                        lora_dropout=args.lora_dropout, target_modules="all-linear",
                        # a classification head is trained in full (peft's modules_to_save for
                        # the task type), not as an adapter
                        exclude_modules=None if task_type == "CAUSAL_LM" else HEADS,
                        trainable_token_indices=trainable_tokens or None)
    return get_peft_model(model, config)


def trained_model(trainer: Trainer) -> Any:
    """The model to save: LoRA adapters merged in (a plain model of the base's class)."""
    model = trainer.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model


def resume_path(args: argparse.Namespace, out: str) -> str | None:
    """``--resume``: a checkpoint directory, or ``last`` (the newest under OUT/checkpoints)."""
    resume = getattr(args, "resume", None)
    if resume != "last":
        return resume
    found = get_last_checkpoint(os.path.join(out, CHECKPOINTS)) if os.path.isdir(
        os.path.join(out, CHECKPOINTS)) else None
    if found is None:
        raise SystemExit(f"--resume last: no checkpoint in {os.path.join(out, CHECKPOINTS)}")
    return found


def train(trainer: RailsTrainer, args: argparse.Namespace, out: str) -> None:
    """Run the trainer (resuming if asked); OUT/checkpoints goes if it stayed empty."""
    if getattr(args, "no_progress", False):
        trainer.remove_callback(PrinterCallback)  # Trainer's closing metrics dict
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    if trainer.is_fsdp_enabled or (plugin is not None and plugin.zero_stage == 3):
        # the validation and the final save read the whole model in one process
        raise SystemExit("FSDP and DeepSpeed ZeRO-3 shard the weights, which the validation and "
                         "the final save read whole: use DDP or ZeRO-1/2")
    resume = resume_path(args, out)
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, Progress):
            callback.resumed_from = resume
    trainer.train(resume_from_checkpoint=resume)
    # every rank is out of train() (whose end still lists OUT/checkpoints) before rank 0
    # removes it: a rank 1 once globbed it after rank 0's rmdir
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        with contextlib.suppress(OSError):
            os.rmdir(os.path.join(out, CHECKPOINTS))


def library_record(args: argparse.Namespace, trainer: Trainer) -> dict[str, Any]:
    """What the library part of a run was, for training_config.json."""
    return {"trainer": type(trainer).__name__, "processes": trainer.args.world_size,
            "device": str(trainer.args.device), "grad_accum": getattr(args, "grad_accum", 1),
            "lora": bool(getattr(args, "lora", False)),
            "resumed_from": getattr(args, "resume", None)}
