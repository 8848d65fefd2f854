"""Tiny random-weight Llama models for tests (head_dim 32: vLLM's CPU attention needs it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig


def tiny_config(tokenizer: Any, **overrides: Any) -> LlamaConfig:
    fields: dict[str, Any] = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    fields.update(overrides)
    return LlamaConfig(**fields)


def save_tiny(model_cls: Any, path: Path, tokenizer: Any, seed: int = 0, **overrides: Any) -> Path:
    """A seeded random ``model_cls`` with the tiny config, saved with its tokenizer."""
    torch.manual_seed(seed)
    model_cls(tiny_config(tokenizer, **overrides)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{m['role']}}\n{{m['content']}}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def step_tokenizer(name: str) -> Any:
    """The project tokenizer, extended the way a PRM of step format ``name`` would be."""
    from verifier_training.train.tokenizer import build_tokenizer

    tok = build_tokenizer()
    if name == "bon":
        tok.add_tokens(["<|step|>"], special_tokens=True)
    elif name == "qwen":
        tok.add_tokens(["<extra_0>", "<|im_start|>", "<|im_end|>"], special_tokens=True)
        tok.chat_template = QWEN_TEMPLATE
    elif name == "math_shepherd":
        tok.add_tokens(["ки"])
    return tok
