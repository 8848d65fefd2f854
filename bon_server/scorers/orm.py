"""Outcome reward model: any HF sequence-classification model directory (or hub id).

A head with one label is read through a sigmoid, two labels through a softmax
(probability of label 1, "correct"). ``format_for_orm`` is the single place that
decides what text the ORM sees; ``verifier_training`` builds its data with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..types import Candidate, Prompt
from .base import MicroBatcher
from .device import resolve_device


def format_for_orm(tokenizer: Any, prompt: Prompt, completion: str) -> str:
    """The conversation as the verifier reads it: its own chat template when it has one."""
    if prompt.messages is not None:
        messages = [{"role": m.role, "content": m.content} for m in prompt.messages]
        messages.append({"role": "assistant", "content": completion})
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(messages, tokenize=False)
        return "\n".join(m["content"] for m in messages)
    return (prompt.text or "") + completion


class ORMScorer:
    kind = "orm"

    def __init__(self, model: Any, tokenizer: Any, *, batch_size: int = 64) -> None:
        import torch

        num_labels = model.config.num_labels
        if num_labels not in (1, 2):
            raise ValueError(f"an ORM head needs 1 or 2 labels, this one has {num_labels}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.max_length = getattr(model.config, "max_position_embeddings", None) or 4096
        self._torch = torch
        self._batcher: MicroBatcher[str, float] = MicroBatcher(self.score_texts, batch_size)

    @classmethod
    def from_pretrained(
        cls, path: str, *, device: str = "auto", dtype: str = "auto", batch_size: int = 64
    ) -> ORMScorer:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        torch_device, torch_dtype = resolve_device(device, dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
        tokenizer.truncation_side = "left"  # the answer is at the end: keep it
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch_dtype)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        return cls(model.to(torch_device), tokenizer, batch_size=batch_size)

    def score_texts(self, texts: list[str]) -> list[float]:
        """Blocking forward pass; probability that each text ends in a correct answer."""
        torch = self._torch
        enc = self.tokenizer(
            texts,
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=self.max_length,
            add_special_tokens=False,
        ).to(self.device)
        with torch.inference_mode():
            logits = self.model(**enc).logits.float()
        if logits.shape[-1] == 1:
            probs = torch.sigmoid(logits[:, 0])
        else:
            probs = torch.softmax(logits, dim=-1)[:, 1]
        return probs.cpu().tolist()

    async def score(
        self, prompt: Prompt, candidates: Sequence[Candidate], aggregation: str | None = None
    ) -> list[float]:
        texts = [format_for_orm(self.tokenizer, prompt, c.text) for c in candidates]
        return await self._batcher.submit(texts)
