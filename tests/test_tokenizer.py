"""The character-level tokenizer: round trips, special tokens, chat template, shipped copy."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from verifier_training.train.tokenizer import (
    CHARACTERS,
    CHAT_TEMPLATE,
    SPECIAL_TOKENS,
    build_tokenizer,
)

SHIPPED = Path(__file__).resolve().parents[1] / "bon_server" / "embedded" / "arith-policy"


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def test_vocab(tok):
    assert len(tok) == len(SPECIAL_TOKENS) + len(CHARACTERS) == 104
    assert tok.eos_token == "<|end|>" and tok.bos_token == "<|bos|>"
    assert tok.pad_token == "<|pad|>" and tok.unk_token == "<|unk|>"
    assert set(tok.all_special_tokens) == set(SPECIAL_TOKENS)


def test_round_trip_printable_ascii(tok):
    rng = random.Random(0)
    alphabet = "".join(CHARACTERS)
    samples = [
        "",
        " ",
        "  double  spaces  ",
        "= 17 + 92 - 9\nThe answer is 100.",
        "\ttab\n\nnewlines\n",
    ]
    samples += [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 200))) for _ in range(200)
    ]
    for s in samples:
        ids = tok.encode(s, add_special_tokens=False)
        assert len(ids) == len(s)  # one token per character
        assert tok.decode(ids) == s
        assert tok.decode(ids, skip_special_tokens=True) == s
    assert tok.encode("abc") == tok.encode("abc", add_special_tokens=False)  # nothing added


def test_special_tokens_are_single_tokens(tok):
    for special in SPECIAL_TOKENS:
        ids = tok.encode(f"a{special}b", add_special_tokens=False)
        assert ids == [
            tok.convert_tokens_to_ids("a"),
            tok.convert_tokens_to_ids(special),
            tok.convert_tokens_to_ids("b"),
        ]
    text = "<|bos|><|user|>hi there<|end|><|assistant|>= 5\nThe answer is 5.<|end|>"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=True) == "hi there= 5\nThe answer is 5."


def test_unknown_characters(tok):
    ids = tok.encode("é\r", add_special_tokens=False)
    assert ids == [tok.unk_token_id] * 2
    assert tok.decode(ids, skip_special_tokens=True) == ""


def test_chat_template(tok):
    assert tok.chat_template == CHAT_TEMPLATE
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": "= 5\nThe answer is 5."},
        {"role": "user", "content": "What is 4 * 5?"},
    ]
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|bos|><|system|>Be brief.<|end|><|user|>What is 2 + 3?<|end|>"
        "<|assistant|>= 5\nThe answer is 5.<|end|><|user|>What is 4 * 5?<|end|><|assistant|>"
    )
    no_prompt = tok.apply_chat_template(messages[1:2], tokenize=False, add_generation_prompt=False)
    assert no_prompt == "<|bos|><|user|>What is 2 + 3?<|end|>"
    with pytest.raises(Exception, match="unsupported role tool"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_shipped_tokenizer_loads_with_auto_tokenizer(tok):
    from transformers import AutoTokenizer

    shipped = AutoTokenizer.from_pretrained(str(SHIPPED))
    assert shipped.chat_template == CHAT_TEMPLATE
    assert shipped.get_vocab() == tok.get_vocab()
    assert shipped.eos_token == "<|end|>"
    s = "= 17 + 92 - 9\nThe answer is 100."
    assert shipped.decode(shipped.encode(s)) == s
    # The template lives in tokenizer_config.json, read by old and new transformers alike.
    assert "chat_template" in (SHIPPED / "tokenizer_config.json").read_text()


@pytest.mark.parametrize("kind", ["numbers", "arrows"])
def test_number_tokenizers_round_trip_and_keep_numbers_whole(kind):
    tok = build_tokenizer(numbers=True, arrows=kind == "arrows")
    rng = random.Random(1)
    alphabet = "".join(CHARACTERS)
    samples = ["12>3>57", "0>9, 007>8", "1234>5 -8 = 99", "Edges: 12>3, 3>57."]
    samples += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 120)))
                for _ in range(200)]
    samples += ["".join(rng.choice("0123456789> ,") for _ in range(60)) for _ in range(200)]
    for s in samples:
        ids = tok.encode(s, add_special_tokens=False)
        assert tok.decode(ids) == s
        assert tok.unk_token_id not in ids
    pieces = tok.convert_ids_to_tokens(tok.encode("12>3, 57 99", add_special_tokens=False))
    if kind == "arrows":
        assert pieces == ["12>", "3", ",", " ", "57", " ", "99"]
        assert len(tok) == 104 + 990 + 1000
    else:
        assert pieces == ["12", ">", "3", ",", " ", "57", " ", "99"]
        assert len(tok) == 104 + 990
