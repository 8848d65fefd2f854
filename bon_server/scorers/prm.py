"""Process reward model: one score per step, aggregated into one score per candidate.

What the PRM reads is decided in ``steps.py`` (``split_steps``, ``encode_steps``); this
module loads the model, runs padded batches and reads each step's score at the
positions ``encode_steps`` returns. Two heads, chosen by the ``StepFormat``:

    classify    a two-class token head (``bon``, ``qwen``): P(label 1) at the position.
    plus_minus  a causal LM (``math_shepherd``, ``rlhflow``): the softmax over the logits
                of "+" and "-" at the position, probability of "+".

Qwen2.5-Math-PRM ships its own modeling code (``Qwen2ForProcessRewardModel``): it loads
only with ``trust_remote_code=True``, and that path is not exercised by the tests (they
cannot download it). Its code was written for transformers 4.x; newer releases may need
it patched.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from ..types import Candidate, Prompt
from .base import MicroBatcher, aggregate, check_aggregation
from .device import resolve_device
from .steps import (
    DEFAULT_SEPARATOR,
    STEP_FORMATS,
    StepFormat,
    check_format,
    encode_steps,
    split_steps,
    tag_token_id,
)

QWEN_PRM_ARCHITECTURE = "Qwen2ForProcessRewardModel"
Encoded = tuple[Sequence[int], Sequence[int]]  # token ids, positions where step scores are read


def _is_token(tokenizer: Any, text: str, *, space_prefix: bool = False) -> bool:
    """Whether ``text`` is one known token (``space_prefix``: after a lone sentencepiece space)."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if not ids or ids[-1] == tokenizer.unk_token_id:
        return False
    if len(ids) > 1 and not (space_prefix and not tokenizer.decode(ids[:-1]).strip()):
        return False
    return tokenizer.decode(ids[-1:]).strip() == text


def detect_format(tokenizer: Any) -> StepFormat:
    """The step format a PRM's tokenizer was built for; rlhflow is never guessed."""
    if _is_token(tokenizer, "<|step|>"):
        return STEP_FORMATS["bon"]
    if _is_token(tokenizer, "<extra_0>"):
        return STEP_FORMATS["qwen"]
    # Byte-level vocabularies (Llama 3, Qwen) may hold "ки" as an ordinary token: trust it
    # only where it was added on purpose or there is no chat template (Math-Shepherd's
    # Mistral base tokenizer has none).
    if _is_token(tokenizer, "ки", space_prefix=True) and (
        "ки" in tokenizer.get_added_vocab() or not getattr(tokenizer, "chat_template", None)
    ):
        return STEP_FORMATS["math_shepherd"]
    valid = ", ".join(STEP_FORMATS)
    raise ValueError(
        "cannot detect the PRM step format from its tokenizer (no single-token '<|step|>', "
        f"'<extra_0>' or 'ки'); name it explicitly with step_format, one of: {valid}"
    )


class PRMScorer:
    kind = "prm"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        fmt: StepFormat,
        *,
        aggregation: str = "min",
        batch_size: int = 64,
        step_separator: str = DEFAULT_SEPARATOR,
    ) -> None:
        import torch

        self.aggregation = check_aggregation(aggregation)
        tag_token_id(fmt, tokenizer)  # fail at load time, not with every candidate scoring 0
        if fmt.head == "classify":
            num_labels = model.config.num_labels
            # (Qwen2ForProcessRewardModel's head is two-way whatever its config says.)
            if type(model).__name__.endswith("ForTokenClassification") and num_labels != 2:
                raise ValueError(f"a {fmt.name} PRM needs a 2-label token head, not {num_labels}")
        else:
            self.plus_id = tokenizer.encode("+", add_special_tokens=False)[-1]
            self.minus_id = tokenizer.encode("-", add_special_tokens=False)[-1]
            if self.plus_id == self.minus_id:
                raise ValueError("'+' and '-' are the same token for this tokenizer")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.fmt = fmt
        self.step_separator = step_separator  # how candidates are cut into steps (split_steps)
        self.device = next(model.parameters()).device
        self.max_length: int | None = getattr(model.config, "max_position_embeddings", None)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (tokenizer.eos_token_id or 0)
        # A causal LM's logits span the vocabulary: compute them only at the read positions.
        self._keep_logits = fmt.head == "plus_minus" and (
            "logits_to_keep" in inspect.signature(model.forward).parameters
        )
        # Scoring is one forward pass: no KV cache (the Qwen PRM's own code builds one through
        # DynamicCache methods that transformers 5 removed, unless told not to).
        self._no_cache = {"use_cache": False} if "use_cache" in inspect.signature(
            model.forward).parameters else {}
        self._torch = torch
        self._batcher: MicroBatcher[tuple[Prompt, str], list[float]] = MicroBatcher(
            self._score_texts, batch_size
        )

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        *,
        step_format: str = "auto",
        aggregation: str = "min",
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 64,
        trust_remote_code: bool = False,
        step_separator: str = DEFAULT_SEPARATOR,
    ) -> PRMScorer:
        """Load a PRM directory (or hub id); ``step_format="auto"`` reads it off the tokenizer.

        Qwen2.5-Math-PRM needs ``trust_remote_code=True``: its head is its own code.
        """
        from transformers import (
            AutoModel,
            AutoModelForCausalLM,
            AutoModelForTokenClassification,
            AutoTokenizer,
            PretrainedConfig,
        )

        check_aggregation(aggregation)
        torch_device, torch_dtype = resolve_device(device, dtype)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        fmt = detect_format(tokenizer) if step_format == "auto" else check_format(step_format)
        # The raw config.json: reading it needs no remote code, even where its class does.
        architectures = PretrainedConfig.get_config_dict(path)[0].get("architectures") or []
        load: Any
        if QWEN_PRM_ARCHITECTURE in architectures:
            if not trust_remote_code:
                raise ValueError(
                    f"{path} is a {QWEN_PRM_ARCHITECTURE}, whose code ships with the model: "
                    "load it with trust_remote_code=True"
                )
            if fmt.head != "classify":
                raise ValueError(f"{path} has a classification head; use step_format 'qwen'")
            load = AutoModel  # its forward returns the (batch, tokens, 2) logits first
        else:
            wanted = "ForTokenClassification" if fmt.head == "classify" else "ForCausalLM"
            if architectures and not any(a.endswith(wanted) for a in architectures):
                raise ValueError(
                    f"step format {fmt.name!r} needs a *{wanted} model; "
                    f"{path} is {', '.join(architectures)}"
                )
            load = (
                AutoModelForTokenClassification if fmt.head == "classify" else AutoModelForCausalLM
            )
        model = load.from_pretrained(path, dtype=torch_dtype, trust_remote_code=trust_remote_code)
        return cls(
            model.to(torch_device), tokenizer, fmt, aggregation=aggregation, batch_size=batch_size,
            step_separator=step_separator,
        )

    def _truncate(self, ids: Sequence[int], positions: Sequence[int]) -> Encoded:
        """Keep the last ``max_length`` tokens: the steps being judged are at the end."""
        cut = len(ids) - self.max_length if self.max_length else 0
        if cut <= 0:
            return ids, positions
        return ids[cut:], [p - cut for p in positions if p >= cut]

    def score_steps(self, items: Sequence[Encoded]) -> list[list[float]]:
        """Blocking forward pass: each (ids, positions)'s step scores, one per kept position.

        Sequences longer than the model's context lose their first tokens, and with them
        the steps whose positions fall in the cut.
        """
        torch = self._torch
        rows = [self._truncate(ids, positions) for ids, positions in items]
        live = [i for i, (_, positions) in enumerate(rows) if positions]
        results: list[list[float]] = [[] for _ in rows]
        if not live:
            return results
        width = max(len(rows[i][0]) for i in live)
        input_ids = torch.full((len(live), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(live), width), dtype=torch.long)
        batch_idx, pos_idx = [], []
        for b, i in enumerate(live):
            ids, positions = rows[i]
            input_ids[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[b, : len(ids)] = 1
            batch_idx.extend([b] * len(positions))
            pos_idx.extend(positions)
        with torch.inference_mode():
            probs = self._read(input_ids.to(self.device), mask.to(self.device), batch_idx, pos_idx)
        flat = iter(probs.cpu().tolist())
        for i in live:
            results[i] = [next(flat) for _ in rows[i][1]]
        return results

    def _read(self, input_ids: Any, mask: Any, batch_idx: list[int], pos_idx: list[int]) -> Any:
        """The step probability at each (batch_idx, pos_idx)."""
        torch = self._torch
        rows = torch.tensor(batch_idx, device=self.device)
        if self.fmt.head == "classify":
            logits = self.model(input_ids=input_ids, attention_mask=mask, **self._no_cache)[0]
            cols = torch.tensor(pos_idx, device=self.device)
            return torch.softmax(logits[rows, cols].float(), dim=-1)[:, 1]
        kwargs: dict[str, Any] = {"use_cache": False}
        if self._keep_logits:
            keep = sorted(set(pos_idx))
            kwargs["logits_to_keep"] = torch.tensor(keep, device=self.device)
            column = {p: k for k, p in enumerate(keep)}
            pos_idx = [column[p] for p in pos_idx]
        logits = self.model(input_ids=input_ids, attention_mask=mask, **kwargs)[0]
        cols = torch.tensor(pos_idx, device=self.device)
        pair = logits[rows, cols][:, [self.plus_id, self.minus_id]].float()
        return torch.softmax(pair, dim=-1)[:, 0]

    def _score_texts(self, items: list[tuple[Prompt, str]]) -> list[list[float]]:
        """The batcher's worker thread: once serving, the tokenizer is used only from here."""
        encoded: list[Encoded | None] = []
        for prompt, text in items:
            steps = split_steps(text, self.step_separator)
            try:
                encoded.append(encode_steps(self.fmt, self.tokenizer, prompt, steps))
            except ValueError:  # no steps, or a tag inside a step: nothing sound to score
                encoded.append(None)
        scored = iter(self.score_steps([e for e in encoded if e is not None]))
        return [next(scored) if e is not None else [] for e in encoded]

    async def step_scores(
        self, prompt: Prompt, candidates: Sequence[Candidate]
    ) -> list[list[float]]:
        """Per-step scores of each candidate; [] where a candidate has nothing to score."""
        return await self._batcher.submit([(prompt, c.text) for c in candidates])

    async def score(
        self, prompt: Prompt, candidates: Sequence[Candidate], aggregation: str | None = None
    ) -> list[float]:
        how = check_aggregation(aggregation or self.aggregation)
        return [aggregate(s, how) for s in await self.step_scores(prompt, candidates)]
