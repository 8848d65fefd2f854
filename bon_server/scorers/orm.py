"""Outcome reward model: any HF sequence-classification model directory (or hub id).

A head with one label is read through a sigmoid, two labels through a softmax
(probability of label 1, "correct"). ``format_for_orm`` is the single place that
decides what text the ORM sees; ``verifier_training`` builds its data with it.

One request's candidates share its prompt, often most of each text: ``score_texts`` runs
those shared tokens once and only each candidate's own tokens after them, against the
shared key-value cache (``share_prefixes`` finds the groups, in any batch the
``MicroBatcher`` merges), with the scores of scoring each text alone.
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

    def __init__(
        self, model: Any, tokenizer: Any, *, batch_size: int = 64, share_prefix: bool = True
    ) -> None:
        import torch

        num_labels = model.config.num_labels
        if num_labels not in (1, 2):
            raise ValueError(f"an ORM head needs 1 or 2 labels, this one has {num_labels}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.max_length = getattr(model.config, "max_position_embeddings", None) or 4096
        self._torch = torch
        self.share_prefix = share_prefix  # False: every text in full (--no-verifier-share-prefix)
        self._batcher: MicroBatcher[str, float] = MicroBatcher(self.score_texts, batch_size)

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 64,
        share_prefix: bool = True,
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
        return cls(
            model.to(torch_device), tokenizer, batch_size=batch_size, share_prefix=share_prefix
        )

    def score_texts(self, texts: list[str]) -> list[float]:
        """Blocking forward passes; probability that each text ends in a correct answer.

        Texts that share most of their tokens (one request's candidates share its prompt)
        are scored in groups: each group's shared tokens once, their key-value cache
        repeated for the rest of each text (``_score_shared``); texts that share little go
        in one padded batch. The scores are those of scoring each text alone.
        """
        ids = self.tokenizer(
            texts, truncation=True, max_length=self.max_length, add_special_tokens=False
        )["input_ids"]
        scores: list[float] = [0.0] * len(texts)
        grouped = share_prefixes(ids) if self.share_prefix else [([i], 0) for i in range(len(ids))]
        groups = [(g, shared) for g, shared in grouped if shared]
        alone = [g[0] for g, shared in grouped if not shared]
        if groups:
            members = [i for g, _ in groups for i in g]
            for i, score in zip(members, self._score_shared(ids, groups), strict=True):
                scores[i] = score
        if alone:
            batch = self.tokenizer.pad(
                {"input_ids": [ids[i] for i in alone]}, padding=True, return_tensors="pt"
            ).to(self.device)
            with self._torch.inference_mode():
                logits = self.model(**batch).logits
            for i, score in zip(alone, self._probabilities(logits), strict=True):
                scores[i] = score
        return scores

    def _score_shared(
        self, ids: list[list[int]], groups: list[tuple[list[int], int]]
    ) -> list[float]:
        """Two passes for every group at once: the groups' shared prefixes (right-padded),
        then each member's rest at its own positions, against its group's cache rows (the
        padding masked out). Scores in the order of the groups' members."""
        torch = self._torch
        pad = self.tokenizer.pad_token_id

        def padded(rows: list[list[int]]) -> tuple[Any, Any]:
            width = max(map(len, rows))
            tokens = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
            return tokens.to(self.device), mask.to(self.device)

        prefixes, prefix_mask = padded([ids[g[0]][:shared] for g, shared in groups])
        rests, rest_mask = padded([ids[i][shared:] for g, shared in groups for i in g])
        row = torch.tensor([k for k, (g, _) in enumerate(groups) for _ in g], device=self.device)
        start = torch.tensor([shared for g, shared in groups for _ in g], device=self.device)
        with torch.inference_mode():
            cache = self.model(
                input_ids=prefixes, attention_mask=prefix_mask, use_cache=True
            ).past_key_values
            cache.batch_select_indices(row)  # each member its group's prefix
            positions = start[:, None] + torch.arange(rests.shape[1], device=self.device)
            logits = self.model(
                input_ids=rests,
                attention_mask=torch.cat([prefix_mask[row], rest_mask], dim=1),
                position_ids=positions,
                past_key_values=cache,
                use_cache=False,
            ).logits
        return self._probabilities(logits)

    def _probabilities(self, logits: Any) -> list[float]:
        logits = logits.float()
        if logits.shape[-1] == 1:
            probs = self._torch.sigmoid(logits[:, 0])
        else:
            probs = self._torch.softmax(logits, dim=-1)[:, 1]
        return probs.cpu().tolist()

    async def score(
        self, prompt: Prompt, candidates: Sequence[Candidate], aggregation: str | None = None
    ) -> list[float]:
        texts = [format_for_orm(self.tokenizer, prompt, c.text) for c in candidates]
        return await self._batcher.submit(texts)


# A group shares a prefix worth computing once: at least this many tokens, and at least this
# share of each of its texts (a chat template's first tokens, common to every request, are not).
MIN_SHARED_TOKENS, MIN_SHARED_FRACTION = 16, 0.5


def share_prefixes(ids: Sequence[Sequence[int]]) -> list[tuple[list[int], int]]:
    """The texts (token id lists) in groups that share a long prefix, as (indices, shared
    tokens); a text no other shares enough with comes alone with 0. Each text keeps at
    least one token of its own (the classifier reads its last). Texts sorted by their ids
    put one request's candidates, which share its prompt, side by side."""
    order = sorted(range(len(ids)), key=lambda i: ids[i])
    groups: list[tuple[list[int], int]] = []
    group: list[int] = []
    shared = 0

    def close() -> None:
        if len(group) > 1:
            groups.append((list(group), shared))
        else:
            groups.extend(([i], 0) for i in group)

    for i in order:
        if group:
            common = min(_common(ids[group[0]], ids[i]), shared, len(ids[i]) - 1)
            shortest = min(len(ids[j]) for j in [*group, i])
            if common >= MIN_SHARED_TOKENS and common >= MIN_SHARED_FRACTION * shortest:
                group.append(i)
                shared = common
                continue
            close()
        group, shared = [i], len(ids[i]) - 1
    if group:
        close()
    return groups


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
