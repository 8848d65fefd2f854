"""The one training loop: AdamW, linear warmup then cosine decay, gradient clipping, a smoothed
loss, a progress bar or log lines, an optional time budget.

``sft``, ``train-orm``, ``train-prm`` and ``probe-steps`` all run it. A caller keeps its own
data and loss and reads top to bottom::

    loop = Loop(model, Optimization(lr=1e-3, warmup=10), steps=200, desc="train-orm")
    for step in loop:
        loss = ...  # this step's batch through the model
        loop.update(loss)
    print(loop.summary())

This module owns the optimisation only: it knows nothing about batches, models' heads or
what a loss means. (The next step is ``transformers.Trainer``; until then, this is the only
place that steps an optimizer by hand.)
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to ``min_ratio`` at ``total`` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@dataclass(frozen=True, slots=True)
class Optimization:
    """AdamW (betas 0.9 and ``beta2``) with the schedule of ``lr_factor``. ``min_lr_ratio`` 1
    and ``warmup`` 0 give a constant learning rate; ``grad_clip`` 0 no clipping."""

    lr: float
    warmup: int = 0
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    beta2: float = 0.95
    grad_clip: float = 1.0

    @classmethod
    def from_args(cls, args: argparse.Namespace, warmup: int) -> Optimization:
        """From the flags ``add_optimizer_args`` defines."""
        return cls(lr=args.lr, warmup=warmup, min_lr_ratio=args.min_lr_ratio,
                   weight_decay=args.weight_decay, beta2=args.beta2, grad_clip=args.grad_clip)


def add_optimizer_args(p: argparse.ArgumentParser, lr: float) -> None:
    """The flags of ``Optimization`` but the warmup (a count in sft, a fraction elsewhere)."""
    p.add_argument("--lr", type=float, default=lr, help="peak learning rate")
    p.add_argument("--min-lr-ratio", type=float, default=0.1,
                   help="final lr as a fraction of the peak lr (cosine decay)")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    p.add_argument("--beta2", type=float, default=0.95, help="AdamW beta2")
    p.add_argument("--grad-clip", type=float, default=1.0,
                   help="clip the gradient norm to this (0: no clipping)")


class Loop:
    """Iterate for the step numbers, call ``update(loss)`` once per step.

    ``steps`` None runs until the time budget ends it (the schedule then needs ``min_lr_ratio``
    1: there is no end to decay towards). ``time_budget_s`` > 0 stops the loop before a step
    that would start after it; the schedule stays the one for ``steps``. With ``progress``
    off, a log line is printed every ``log_every`` steps and at the last (0: never).
    """

    def __init__(self, model: Any, optimization: Optimization, steps: int | None, *,
                 desc: str = "train", progress: bool = True, time_budget_s: float = 0.0,
                 log_every: int = 100, smoothing: float = 0.05) -> None:
        self.model, self.opt, self.steps = model, optimization, steps
        self.desc, self.progress, self.log_every = desc, progress, log_every
        self.time_budget_s, self.smoothing = time_budget_s, smoothing
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=optimization.lr, betas=(0.9, optimization.beta2),
            weight_decay=optimization.weight_decay)
        total = steps or 1
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_factor(s, total, optimization.warmup, optimization.min_lr_ratio))
        self.smooth: float | None = None
        self.done = 0  # optimizer steps taken
        self.seconds = 0.0
        self.start = time.time()
        self._step = 0

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    @property
    def elapsed(self) -> float:
        """Seconds since the loop started."""
        return time.time() - self.start

    def __iter__(self) -> Iterator[int]:
        self.model.train()
        self.start = time.time()
        numbers = range(self.steps) if self.steps is not None else itertools.count()
        self._bar = tqdm(numbers, desc=self.desc, disable=not self.progress, mininterval=2.0,
                         total=self.steps)
        try:
            for step in self._bar:
                if self.time_budget_s and self.elapsed >= self.time_budget_s:
                    break
                self._step = step
                yield step
        finally:
            self.seconds = self.elapsed
            self._bar.close()

    def update(self, loss: torch.Tensor) -> None:
        """One optimizer step on ``loss`` (backward, clip, step, schedule), then the logs."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.opt.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.opt.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.done += 1
        value, w = loss.item(), self.smoothing  # w: the newest loss's weight in the average
        self.smooth = value if self.smooth is None else (1 - w) * self.smooth + w * value
        self._bar.set_postfix(loss=f"{self.smooth:.4f}", lr=f"{self.lr:.2e}")
        step, last = self._step, self.steps is not None and self._step == self.steps - 1
        if not self.progress and self.log_every and (step % self.log_every == 0 or last):
            print(f"step {step:5d}  loss {self.smooth:.4f}  lr {self.lr:.2e}", flush=True)

    def summary(self) -> str:
        """``trained D/N steps in S s[ (time budget: ...)]; final smoothed loss L``."""
        planned = self.steps if self.steps is not None else self.done
        stopped = "" if self.done == planned else f" (time budget: stopped after {self.done})"
        loss = "none" if self.smooth is None else f"{self.smooth:.4f}"
        return (f"trained {self.done}/{planned} steps in {self.seconds:.0f} s{stopped}; "
                f"final smoothed loss {loss}")
